"""How ``pipec check`` prints what it found: ``text``, ``json``, ``sarif`` or ``github``.

Each takes the :class:`pipec.checking.Report` of every file checked and gives the text
to print. Positions are 1-based lines and columns counted in characters (Unicode code
points); an end column is one past the last character, as in the terminal's carets.

``json`` is a list with one object per diagnostic, file by file, in the checker's order::

    [{"file": "examples/train.pipe", "line": 18, "column": 43, "end_line": 18,
      "end_column": 47, "severity": "error", "code": "undefined-name",
      "category": "semantic", "message": "undefined name `grad`", "hint": "did you mean `grads`?"}]

``line`` and the other positions are null when a diagnostic has no place in the file
(a file that does not exist); ``hint`` is null when there is none; ``severity`` is
``error`` or ``warning``; ``code`` names the check (a key of :data:`pipec.dsl.codes.CODES`,
stable across releases) and ``category`` groups it (``syntax``, ``semantic``, ``lint``,
``parameter``, ``file`` or ``unsupported``).

``sarif`` is a SARIF 2.1.0 log for code scanning (GitHub, GitLab, Azure DevOps): one run,
one rule per code (its description from :data:`pipec.dsl.codes.CODES`), file paths
relative to the working folder when they are under it.

``github`` prints workflow commands (``::error file=...,line=...::message``), which a
GitHub Actions run shows as annotations on the pull request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipec.checking import Report
from pipec.dsl.codes import CODES, category_of

FORMATS = ("text", "json", "sarif", "github")

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

def render(reports: list[Report], fmt: str, quiet: bool = False) -> str:
    """The text for format ``fmt`` (one of :data:`FORMATS`); ``quiet`` leaves warnings out
    (the text format still counts them)."""
    if fmt == "text":
        return to_text(reports, quiet)
    if quiet:
        reports = [_errors_only(r) for r in reports]
    if fmt == "json":
        return json.dumps(to_json(reports), indent=2, ensure_ascii=False) + "\n"
    if fmt == "sarif":
        return json.dumps(to_sarif(reports), indent=2, ensure_ascii=False) + "\n"
    if fmt == "github":
        return to_github(reports)
    raise ValueError(f"unknown format {fmt!r}")


def _errors_only(report: Report) -> Report:
    return Report(report.path, report.source, report.errors, report.module, report.pipeline)


def _diagnostics(reports: list[Report]):
    for report in reports:
        for d in report.diagnostics:
            yield report, d


# ---- text -----------------------------------------------------------------------------------


def to_text(reports: list[Report], quiet: bool = False) -> str:
    """What a person reads: each diagnostic with ``file:line:col``, the line, a caret and
    the hint; ``FILE: ok`` for a file without errors; a count when there are several.
    ``quiet`` shows errors only, and counts the warnings."""
    blocks = []
    for report in reports:
        shown = [d.render(report.source) for d in (report.errors if quiet else report.diagnostics)]
        if report.errors:
            blocks.append("\n\n".join(shown))
        else:
            warnings = len(report.warnings)
            ok = f"{report.path}: ok" + (f" ({warnings} warning{'s' if warnings != 1 else ''})"
                                         if warnings else "")
            blocks.append("\n".join([*shown, ok]))
    if len(reports) > 1:
        failed = sum(1 for r in reports if r.errors)
        blocks.append(f"checked {len(reports)} files: {len(reports) - failed} ok"
                      + (f", {failed} with errors" if failed else ""))
    return "\n".join(blocks) + "\n" if blocks else ""


# ---- json -----------------------------------------------------------------------------------


def to_json(reports: list[Report]) -> list[dict]:
    """The ``json`` format as Python objects (see the module docstring)."""
    out = []
    for report, d in _diagnostics(reports):
        span = d.span
        out.append({
            "file": d.path or report.path,
            "line": span.line if span else None,
            "column": span.column if span else None,
            "end_line": span.end_line if span else None,
            "end_column": span.end_column if span else None,
            "severity": d.severity,
            "code": d.code,
            "category": category_of(d.code, d.is_error),
            "message": d.message,
            "hint": d.hint,
        })
    return out


# ---- sarif ----------------------------------------------------------------------------------


def to_sarif(reports: list[Report]) -> dict:
    """A SARIF 2.1.0 log of every diagnostic, one rule per code."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool_version = version("pipec")
    except PackageNotFoundError:  # run from a checkout that was never installed
        tool_version = "0"
    codes = sorted({d.code for _, d in _diagnostics(reports)})
    rules = [{"id": code, "name": code,
              "shortDescription": {"text": CODES[code][1] if code in CODES else code},
              "properties": {"category": category_of(code)}} for code in codes]
    results = []
    for report, d in _diagnostics(reports):
        text = d.message + (f"\nhint: {d.hint}" if d.hint else "")
        location = {"artifactLocation": _artifact(d.path or report.path)}
        if d.span is not None:
            location["region"] = {"startLine": d.span.line, "startColumn": d.span.column,
                                  "endLine": d.span.end_line, "endColumn": d.span.end_column}
        results.append({
            "ruleId": d.code,
            "ruleIndex": codes.index(d.code),
            "level": "error" if d.is_error else "warning",
            "message": {"text": text},
            "locations": [{"physicalLocation": location}],
        })
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "pipec", "version": tool_version, "rules": rules}},
            # Our columns count characters, not SARIF's default UTF-16 code units.
            "columnKind": "unicodeCodePoints",
            "originalUriBaseIds": {"SRCROOT": {"uri": Path.cwd().as_uri() + "/"}},
            "results": results,
        }],
    }


def _artifact(path: str) -> dict:
    """Where a file is, relative to the working folder (SRCROOT) when it is inside it,
    as code scanning matches results to the repository's files by relative path."""
    if path.startswith("<"):  # <stdin>
        return {"uri": path}
    absolute = Path(os.path.abspath(path))
    try:
        return {"uri": absolute.relative_to(Path.cwd()).as_posix(), "uriBaseId": "SRCROOT"}
    except ValueError:
        return {"uri": absolute.as_uri()}


# ---- github ---------------------------------------------------------------------------------


def to_github(reports: list[Report]) -> str:
    """One GitHub Actions workflow command per diagnostic."""
    lines = []
    for report, d in _diagnostics(reports):
        props = {"file": d.path or report.path}
        if d.span is not None:
            props.update(line=d.span.line, col=d.span.column, endLine=d.span.end_line,
                         endColumn=d.span.end_column)
        props["title"] = f"pipec {d.code}"
        fields = ",".join(f"{key}={_escape(str(value), True)}" for key, value in props.items())
        text = d.message + (f"\nhint: {d.hint}" if d.hint else "")
        lines.append(f"::{'error' if d.is_error else 'warning'} {fields}::{_escape(text)}")
    return "".join(line + "\n" for line in lines)


def _escape(text: str, prop: bool = False) -> str:
    """Escape as the runner's workflow-command parser expects (``%``, newlines, and in a
    property also ``:`` and ``,``)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text

