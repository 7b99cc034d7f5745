"""The `pipec` command.

Exit codes: 0 success, 1 errors in the pipeline (or it failed while running), 2 usage
errors. pipec never shows a Python traceback for bad input; an internal error says it is
a bug in pipec. Static commands (check, compile, graph, fmt, lsp) never import user code.

Each command imports what it needs when it runs: `pipec check` is called by editors,
pre-commit and CI on every save and commit, so its start-up time is user-visible, and
the engines, the renderer and the progress display stay out of it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipec.dsl.diagnostics import CompileError, FileError, PipecError, PipelineRuntimeError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors are usage errors: exit 2
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _backend_names() -> list[str]:
    from pipec.backends import names
    return names()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pipec", description="Compile and run .pipe pipelines on local, Dask, Ray or Spark.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        return p

    p = add("check", "report every error and warning in .pipe files")
    p.add_argument("file", nargs="+", help="a .pipe file, a folder (every .pipe file under it) or - for "
                                          "standard input")
    p.add_argument("--backend", "-b", help="also check what this backend supports")
    p.add_argument("--param", "-p", action="append", default=[], metavar="K=V", help="check these parameter values")
    p.add_argument("--quiet", "-q", action="store_true", help="print errors only, no warnings")
    p.add_argument("--format", "-f", choices=["text", "json", "sarif", "github"], default="text",
                   help="text for people (on standard error); json, sarif (code scanning) or github "
                        "(workflow annotations) on standard output")
    p.add_argument("--stdin-filename", metavar="PATH", help="the name of the file read from -, for messages "
                                                            "and for finding the modules it uses")

    p = add("compile", "show the IR or a backend's lowered plan")
    p.add_argument("file")
    p.add_argument("--backend", "-b", help="lower for this backend (default: show the IR)")
    p.add_argument("--format", "-f", choices=["text", "json"], default=None)
    p.add_argument("--param", "-p", action="append", default=[], metavar="K=V")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")

    p = add("graph", "draw the pipeline's graph, or what a backend will run")
    p.add_argument("file")
    p.add_argument("--backend", "-b", help="draw this backend's lowered graph")
    p.add_argument("--format", "-f", choices=["dot", "mermaid", "json", "svg", "png", "html"], default="dot")
    p.add_argument("--param", "-p", action="append", default=[], metavar="K=V")
    p.add_argument("-o", "--output", help="write to this file (needed for png)")

    p = add("run", "run a pipeline")
    p.add_argument("file")
    p.add_argument("--backend", "-b", default=None, help="engine (default: the embedded default engine)")
    p.add_argument("--param", "-p", action="append", default=[], metavar="K=V")
    p.add_argument("--address", help="a cluster to use: Dask scheduler, Ray head or Spark master")
    p.add_argument("--run-dir", help="where checkpoints go: a folder or a storage URL such as s3://bucket/runs/x "
                                     "(default .pipec/runs/RUN)")
    p.add_argument("--resume", metavar="RUN", help="continue run RUN (its id under .pipec/runs, its folder or its URL) "
                                                   "from its last completed round")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = add("fmt", "format .pipe files canonically")
    p.add_argument("file", nargs="+", help="a .pipe file, a folder (every .pipe file under it) or - for "
                                          "standard input; one file alone is printed formatted")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 if a file is not formatted")
    group.add_argument("--diff", action="store_true", help="print a unified diff of what would change; "
                                                           "exit 1 if anything would")
    group.add_argument("--write", "-w", action="store_true", help="rewrite the files in place")
    p.add_argument("--stdin-filename", metavar="PATH", help="the name of the file read from -, for messages")

    p = add("lsp", "run the language server on standard input and output (for editors)")
    p.add_argument("--stdio", action="store_true", help="accepted for editors that pass it; stdio is the default")

    add("backends", "what each engine supports")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except CompileError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_ERROR
    except UsageError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USAGE
    except (FileError, PipelineRuntimeError) as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_ERROR
    except PipecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug in pipec, not in the user's input
        if os.environ.get("PIPEC_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc}\n"
              "this is a bug in pipec; rerun with PIPEC_DEBUG=1 for the traceback", file=sys.stderr)
        return 3


# ---- commands -------------------------------------------------------------------------------


def _load(path: str):
    from pipec.api import load
    return load(path)


def _params(pipeline, items):
    from pipec.api import parse_param_args
    return pipeline.params(parse_param_args(items))


def _emit(text: str, output: str | None) -> None:
    if output:
        from pipec.backends.runtime.sinks import atomic_write
        atomic_write(output, text)
    else:
        sys.stdout.write(text)


def cmd_check(args) -> int:
    from pipec import inputs
    from pipec.check_formats import render
    from pipec.checking import check_file, file_diagnostic, Report
    params = None
    if args.param:
        from pipec.api import parse_param_args
        params = parse_param_args(args.param)
    try:
        names = inputs.expand(args.file)
    except FileError as exc:  # a folder without .pipe files: reported like a missing file
        names, unreadable = [], [Report(exc.path, None, [file_diagnostic(exc)])]
    else:
        unreadable = []
    reports = unreadable + [check_file(name, args.backend, params, args.stdin_filename) for name in names]
    text = render(reports, args.format, quiet=args.quiet)
    (sys.stderr if args.format == "text" else sys.stdout).write(text)
    return EXIT_ERROR if any(r.errors for r in reports) else EXIT_OK


def cmd_compile(args) -> int:
    pipeline = _load(args.file)
    pipeline.check(args.backend)
    params = _params(pipeline, args.param)
    import json
    fmt = args.format or ("json" if args.output and args.output.endswith(".json") else "text")
    if args.backend is None:
        if fmt == "json":
            text = pipeline.ir.dumps()
        else:
            from pipec.backends.local import LocalPlan
            text = LocalPlan(pipeline.ir, params).explain()
    else:
        plan = pipeline.lower(args.backend, params)
        text = json.dumps(plan.to_json(), indent=2) + "\n" if fmt == "json" else plan.explain()
    _emit(text, args.output)
    return EXIT_OK


def cmd_graph(args) -> int:
    from pipec.compiler import render
    pipeline = _load(args.file)
    pipeline.check(args.backend)
    if args.backend:
        plan = pipeline.lower(args.backend, _params(pipeline, args.param))
        drawing = render.plan_drawing(plan)
    else:
        drawing = render.pipeline_drawing(pipeline.ir)
    if args.format in ("svg", "png"):
        if args.format == "png" and not args.output:
            raise UsageError("a PNG image needs -o FILE")
        data = render.to_image(drawing, args.format)
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_bytes(data)
        else:
            sys.stdout.write(data.decode("utf-8"))
        return EXIT_OK
    _emit(render.render(drawing, args.format), args.output)
    return EXIT_OK


def cmd_fmt(args) -> int:
    from pipec import inputs
    from pipec.dsl.format import format_source
    names = inputs.expand(args.file)
    show = not (args.check or args.diff or args.write)
    if show and (len(names) > 1 or any(Path(n).is_dir() for n in args.file if n != inputs.STDIN)):
        raise UsageError("several files are formatted in place or checked, not printed",
                         "add --write to rewrite them, --check or --diff to see what would change")
    changed, failed = [], 0
    for name in names:
        try:
            source = inputs.read(name, args.stdin_filename)
            formatted = format_source(source)
        except (CompileError, FileError) as exc:  # report it, and go on with the other files
            print(exc.render(), file=sys.stderr)
            failed += 1
            continue
        if show or (args.write and name == inputs.STDIN):
            sys.stdout.write(formatted)
        if formatted == source.text:
            continue
        changed.append(name)
        if args.check:
            print(f"{source.path}: would be reformatted", file=sys.stderr)
        elif args.diff:
            sys.stdout.write(_unified_diff(source.path, source.text, formatted))
        elif args.write and name != inputs.STDIN:
            from pipec.backends.runtime.sinks import atomic_write
            atomic_write(name, formatted)
            print(f"{name}: formatted", file=sys.stderr)
    if len(names) > 1 and not show:
        verb = "formatted" if args.write else "would be reformatted"
        print(f"{len(names)} files: {len(changed)} {verb}" + (f", {failed} with errors" if failed else ""),
              file=sys.stderr)
    if failed or (changed and (args.check or args.diff)):
        return EXIT_ERROR
    return EXIT_OK


def _unified_diff(path: str, before: str, after: str) -> str:
    """A unified diff that `patch -p0` applies, marking a last line without a newline."""
    import difflib
    lines = []
    for line in difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                     fromfile=path, tofile=path):
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(lines)


def cmd_lsp(args) -> int:
    try:
        from pipec.lsp.server import serve
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("pygls", "lsprotocol", "cattrs", "attrs"):
            raise UsageError(f"the language server needs {exc.name.split('.')[0]}, which is not installed",
                             "pip install 'pipec[lsp]'") from None
        raise
    serve()
    return EXIT_OK


def cmd_run(args) -> int:
    from pipec.progress import TerminalProgress, print_summary
    pipeline = _load(args.file)
    engine = pipeline.backend(args.backend, **({"address": args.address} if args.address else {}))
    for d in pipeline.check(engine):
        print(d.render(pipeline.source), file=sys.stderr)
    params = _params(pipeline, args.param)
    if args.resume and not engine.can("resume"):
        raise UsageError(f"backend `{engine.name}` cannot resume a run",
                         "run it again without --resume, or on a backend that can (`pipec backends`)")
    plan = pipeline.lower(engine, params)
    run_options = {"run_dir": args.run_dir}
    if args.resume:
        run_options = {"run_dir": _resume_dir(args.resume, args.run_dir), "resume": True}
    elif engine.can("resume") and any(loop.parent is None for loop in pipeline.ir.info.loops.values()):
        # Name the run before it starts: if its driver dies, this is what --resume needs
        # (records are kept at the end of each round of a top-level loop).
        import uuid
        run_id = args.run_dir or uuid.uuid4().hex[:12]
        run_options["run_dir"] = args.run_dir or str(Path(".pipec") / "runs" / run_id)
        print(f"run {run_id}  (if it stops, continue it with --resume {run_id})", file=sys.stderr)
    with TerminalProgress(sys.stderr) as progress:
        result = plan.run(progress=progress, **run_options)
    print_summary(result, pipeline, as_json=args.json)
    return EXIT_OK


def _resume_dir(run: str, run_dir: str | None) -> str:
    """The folder of run ``run``: a storage URL or a folder given as is, or an id under
    .pipec/runs."""
    from pipec.backends.runtime import storage
    if not storage.is_local(run):
        if run_dir is not None and run_dir.rstrip("/") != run.rstrip("/"):
            raise UsageError("--resume and --run-dir name different folders", "give only --resume RUN")
        try:
            found = storage.exists(run)
        except storage.StorageUnavailable as exc:
            raise UsageError(exc.message, exc.hint) from None
        except OSError as exc:
            raise UsageError(f"cannot reach run {run}: {exc.strerror or exc}",
                             "check the URL, the credentials and the endpoint (AWS_ENDPOINT_URL, ...)") from None
        if not found:
            raise UsageError(f"no run at {run}", "give the --run-dir URL the run was started with")
        return run
    run = storage.local_path(run)
    folder = Path(run) if Path(run).is_dir() else Path(".pipec") / "runs" / run
    if not folder.is_dir():
        raise UsageError(f"no run `{run}`: it is neither a folder nor a run under .pipec/runs",
                         "the runs are the folders of .pipec/runs (newest last: ls -tr .pipec/runs)")
    if run_dir is not None and Path(run_dir).resolve() != folder.resolve():
        raise UsageError("--resume and --run-dir name different folders", "give only --resume RUN")
    return str(folder)


def cmd_backends(args) -> int:
    from pipec.backends import backend_class, names
    from pipec.compiler.capabilities import FEATURES
    known = names()
    classes = {n: backend_class(n) for n in known}
    width = max(len(f) for f in FEATURES)
    print(f"{'feature':<{width}}  " + "  ".join(f"{n:>6}" for n in known))
    for feature in FEATURES:
        marks = "  ".join(f"{'yes' if feature in classes[n].capabilities else 'no':>6}" for n in known)
        print(f"{feature:<{width}}  {marks}")
    print()
    for n in known:
        extra = classes[n].extra
        print(f"{n}: {classes[n].description}" + (f"  (pip install 'pipec[{extra}]')" if extra else ""))
    return EXIT_OK


_COMMANDS = {"check": cmd_check, "compile": cmd_compile, "graph": cmd_graph, "run": cmd_run,
             "fmt": cmd_fmt, "lsp": cmd_lsp, "backends": cmd_backends}


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
