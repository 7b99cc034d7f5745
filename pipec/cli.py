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
from contextlib import contextmanager
from pathlib import Path

from pipec.dsl.diagnostics import CompileError, FileError, PipecError, PipelineRuntimeError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

# `pipec graph -o NAME` picks the format from NAME's suffix.
GRAPH_SUFFIXES = {".dot": "dot", ".gv": "dot", ".mmd": "mermaid", ".mermaid": "mermaid", ".json": "json",
                  ".svg": "svg", ".png": "png", ".html": "html", ".htm": "html"}


# Whose warnings go to the run's engine-output.log rather than the terminal.
ENGINE_PACKAGES = ("pyspark", "py4j", "ray", "distributed", "dask", "tornado", "bokeh")


class RunInterrupted(Exception):
    """Ctrl-C stopped a run; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors are usage errors: exit 2
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _backend_names() -> list[str]:
    from pipec.backends import names
    return names()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pipec")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked for: importlib.metadata costs about 15 ms,
    which every command would pay if the text were made with the parser."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"pipec {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    # -v and -q go before or after the command; SUPPRESS keeps a command's parser from
    # resetting what was given before it.
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                           help="say more (run: every timing row)")
    verbosity.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                           help="say less (check: errors only; run: no header, progress or timings)")
    parser = _Parser(prog="pipec", description="Compile and run .pipe pipelines on local, Dask, Ray or Spark.",
                     parents=[verbosity])
    parser.add_argument("--version", action=_VersionAction, help="show pipec's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[verbosity])
        return p

    p = add("check", "report every error and warning in .pipe files")
    p.add_argument("file", nargs="+", help="a .pipe file, a folder (every .pipe file under it) or - for "
                                          "standard input")
    p.add_argument("--backend", "-b", help="also check what this backend supports")
    p.add_argument("--param", "-p", action="append", default=[], metavar="K=V", help="check these parameter values")
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
    p.add_argument("--format", "-f", choices=list(GRAPH_SUFFIXES.values()), default=None,
                   help="default: from the -o file's name (.svg, .png, .html, .json, .mmd, .dot), else dot")
    p.add_argument("--param", "-p", action="append", default=[], metavar="K=V")
    p.add_argument("-o", "--output", help="write to this file (needed for png)")
    p.add_argument("--run", metavar="RUN", help="html: colour the nodes by the time they took in run RUN "
                                                "(an id under .pipec/runs, or its folder)")

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
    p.add_argument("--traceback", action="store_true", help="when your code fails, show its whole traceback")

    p = add("runs", "the history of runs under .pipec/runs: list, show, gc")
    runs = p.add_subparsers(dest="runs_command", metavar="ACTION", parser_class=_Parser)
    runs.required = True
    runs.add_parser("list", help="every run, oldest first, with its status")
    show = runs.add_parser("show", help="a run's summary and where its report is")
    show.add_argument("run", help="a run id (or a unique prefix of one), a run folder, or its URL (s3://...)")
    show.add_argument("--open", action="store_true", help="open its report in the web browser")
    collect = runs.add_parser("gc", help="delete old runs, keeping the newest")
    collect.add_argument("--keep", type=int, default=10, metavar="N", help="runs to keep (default 10)")
    collect.add_argument("--dry-run", action="store_true", help="only say what would be deleted")

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

    p = add("completion", "print a shell completion script: eval \"$(pipec completion bash)\"")
    p.add_argument("shell", choices=["bash", "zsh"])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = getattr(args, "verbose", 0)
    args.quiet = getattr(args, "quiet", False)
    try:
        return _COMMANDS[args.command](args)
    except CompileError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_ERROR
    except UsageError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USAGE
    except (FileError, PipelineRuntimeError) as exc:
        user_tb = getattr(exc, "user_traceback", None)
        if user_tb and getattr(args, "traceback", False):
            print(user_tb.rstrip(), file=sys.stderr)
        print(exc.render(), file=sys.stderr)
        if user_tb and not getattr(args, "traceback", True):
            print("  = note: rerun with --traceback for your code's whole traceback", file=sys.stderr)
        return EXIT_ERROR
    except PipecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RunInterrupted as exc:
        print(str(exc), file=sys.stderr)
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
    if args.format is None:
        args.format = GRAPH_SUFFIXES.get(Path(args.output).suffix.lower(), "dot") if args.output else "dot"
    if args.backend:
        plan = pipeline.lower(args.backend, _params(pipeline, args.param))
        drawing = render.plan_drawing(plan)
    else:
        drawing = render.pipeline_drawing(pipeline.ir)
    if args.run and args.format != "html":
        raise UsageError("--run colours the interactive graph only", "add --format html (or -o NAME.html)")
    if args.format == "html":  # with each node's .pipe line, and a run's times
        from pipec.compiler.graph_html import page
        _emit(page(drawing, pipeline.ir, pipeline.source.text, _run_timings(args.run, pipeline)), args.output)
        return EXIT_OK
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


def _run_timings(run: str | None, pipeline) -> dict[str, float] | None:
    """Seconds per node of run ``run`` (None: no run), from its summary.json."""
    if run is None:
        return None
    from pipec import runs
    found = runs.find(run)
    if found is None or found.summary is None:
        raise UsageError(f"no run `{run}` with a summary under .pipec/runs", "see `pipec runs list`")
    if found.summary.get("pipeline") != pipeline.name:
        raise UsageError(f"run `{run}` ran pipeline `{found.summary.get('pipeline')}`, not `{pipeline.name}`")
    return {t["node"]: t["seconds"] for t in found.summary.get("timings", [])}


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
    import uuid
    from pipec.api import run_plan
    from pipec.progress import Names, RunView, print_summary
    from pipec.runs import RUNS, RunEvents
    pipeline = _load(args.file)
    engine = pipeline.backend(args.backend, **({"address": args.address} if args.address else {}))
    for d in pipeline.check(engine):
        print(d.render(pipeline.source), file=sys.stderr)
    params = _params(pipeline, args.param)
    if args.resume and not engine.can("resume"):
        raise UsageError(f"backend `{engine.name}` cannot resume a run",
                         "run it again without --resume, or on a backend that can (`pipec backends`)")
    plan = pipeline.lower(engine, params)
    # The run is named before it starts: its folder keeps its report, and if its driver
    # dies, the name is what --resume needs.
    if args.resume:
        run_dir = _resume_dir(args.resume, args.run_dir)
    else:
        run_dir = args.run_dir or str(RUNS / uuid.uuid4().hex[:12])
    run_id = Path(run_dir).name
    events = None
    try:
        with _engine_output_to_log(run_dir) as stream:
            view = RunView(Names(pipeline.ir, pipeline.source.text), stream, "quiet" if args.quiet else "auto")
            view.header(run_id, pipeline.name, engine.name, _starting(plan), resume=args.resume,
                        resumable=_resumable(engine, pipeline))
            events = RunEvents(view)
            with view:
                result = run_plan(pipeline, plan, events, run_dir, bool(args.resume))
    except KeyboardInterrupt:
        if events is not None and events.status == "finished":  # Ctrl-C as the engine shut down
            print(f"pipeline `{pipeline.name}` finished (interrupted while the engine shut down); "
                  f"wrote {', '.join(events.sinks.values())}", file=sys.stderr)
            return EXIT_OK
        where = ""
        r = events.current_round if events is not None else None
        if r is not None:
            where = f" in round {r['index'] + 1}/{r['count']} of {view.names.loop(r['loop'])}"
        again = f"; continue it with: pipec run {args.file} --resume {run_id}" if _resumable(engine, pipeline) else ""
        raise RunInterrupted(f"interrupted{where}{again}") from None
    print_summary(result, pipeline, as_json=args.json, report=result.report, verbose=args.verbose,
                  quiet=args.quiet)
    return EXIT_OK


def _resumable(engine, pipeline) -> bool:
    """Whether a stopped run of ``pipeline`` on ``engine`` can be continued: records are
    kept at the end of each round of a top-level loop."""
    return engine.can("resume") and any(loop.parent is None for loop in pipeline.ir.info.loops.values())


def _starting(plan) -> str:
    """What starts for ``plan``, in the header's words (``starting X`` or, for a
    cluster that is already running, ``joining X``)."""
    mapping = getattr(plan, "mapping", None)
    engine = getattr(mapping, "engine", None)
    address = getattr(plan, "address", None)
    if not (isinstance(engine, str) and engine):
        engine = f"the {plan.backend} engine at {address}" if address else f"an embedded {plan.backend} engine"
    return f"joining {engine}" if address else f"starting {engine}"


@contextmanager
def _engine_output_to_log(run_dir: str):
    """While the engine runs, whatever its processes write to standard error goes to
    ``engine-output.log`` in the run folder, and pipec's own lines to the terminal. Dask
    workers, Ray's and Spark's processes inherit file descriptor 2 when they start (and
    print tracebacks there on Ctrl-C, which the terminal sends to them all); pipec keeps
    a copy of the terminal's descriptor for ``sys.stderr``. Yields the stream to show
    the run on."""
    try:
        ours = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured stderr (tests): fd 2 is not it
        ours = False
    from pipec.backends.runtime import storage
    # A log is appended as it comes, which object stores cannot do: a run folder there
    # keeps its engine output in a local folder of the same name.
    folder = (Path(storage.local_path(run_dir)) if storage.is_local(run_dir)
              else Path(".pipec") / "runs" / storage.name(run_dir))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / "engine-output.log", "ab")
    except OSError:  # a read-only folder: the output is dropped
        log = open(os.devnull, "wb")
    sys.stderr.flush()
    saved = os.dup(2)
    old_stream = sys.stderr
    if ours:
        sys.stderr = open(os.dup(saved), "w", buffering=1, encoding=old_stream.encoding or "utf-8",
                          errors="backslashreplace")
    os.dup2(log.fileno(), 2)
    import warnings
    shown = warnings.showwarning

    def engine_warnings_to_log(message, category, filename, lineno, file=None, line=None):
        # An engine's own warnings (pyspark's about pandas, say) are engine noise: logged.
        if any(f"{os.sep}{name}{os.sep}" in filename for name in ENGINE_PACKAGES):
            log.write(warnings.formatwarning(message, category, filename, lineno, line).encode("utf-8", "replace"))
            log.flush()
        else:
            shown(message, category, filename, lineno, file, line)
    warnings.showwarning = engine_warnings_to_log
    try:
        yield sys.stderr
    finally:
        warnings.showwarning = shown
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        log.close()
        if ours:
            sys.stderr.close()
            sys.stderr = old_stream


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


def cmd_runs(args) -> int:
    import json
    import time
    from pipec import runs
    if args.runs_command == "list":
        found = runs.all_runs()
        if not found:
            print("no runs under .pipec/runs", file=sys.stderr)
        for r in found:
            s = r.summary or {}
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started_at))
            print(f"{r.id}  {when}  {r.status:<11}  {s.get('pipeline', '?'):<16} {s.get('backend', '?'):<6} "
                  f"{s.get('seconds', 0):8.2f} s")
        return EXIT_OK
    if args.runs_command == "show":
        from pipec.backends.runtime import storage
        if storage.is_local(args.run):
            r = runs.find(args.run)
            if r is None or r.summary is None:
                raise UsageError(f"no run `{args.run}` with a summary under .pipec/runs", "see `pipec runs list`")
            run_id, run_dir, s = r.id, str(r.folder), r.summary
        else:  # a run folder on storage (`--run-dir s3://...`)
            run_id, run_dir, s = args.run.rstrip("/").rsplit("/", 1)[-1], args.run, runs.summary_at(args.run)
            if s is None:
                raise UsageError(f"no run summary at {args.run}",
                                 "a run folder gets its summary.json when its run ends; check the URL")
        print(f"run {run_id}: pipeline {s['pipeline']} on {s['backend']}, {s['status']}"
              + (f" ({s['error']})" if s.get("error") else "") + f", {s['seconds']:.2f} s")
        for loop, label in s.get("loops", {}).items():
            n = sum(1 for x in s["rounds"] if x["loop"] == loop and x["ok"])
            print(f"  {label}: {n} round{'s' if n != 1 else ''}")
        for sink in s["sinks"]:
            print(f"  wrote {sink['path']}  ({sink['name']}, {sink['bytes']} bytes)")
        if args.verbose:
            print(json.dumps(s, indent=1, sort_keys=True))
        print(f"  report: {storage.join(run_dir, runs.REPORT)}")
        if args.open:
            import webbrowser
            webbrowser.open(runs.local_report(run_dir).resolve().as_uri())
        return EXIT_OK
    gone = runs.gc(keep_last=args.keep, dry=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for r in gone:
        print(f"{verb} {r.folder}", file=sys.stderr)
    print(f"{verb} {len(gone)} run{'s' if len(gone) != 1 else ''}", file=sys.stderr)
    return EXIT_OK


def cmd_backends(args) -> int:
    import importlib.util
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
        module, extra = classes[n].engine_module, classes[n].extra
        installed = module is None or importlib.util.find_spec(module) is not None
        how = "" if installed or not extra else f"  (pip install 'pipec[{extra}]')"
        print(f"{n}: {'installed' if installed else 'not installed'}: {classes[n].description}{how}")
    return EXIT_OK


def cmd_completion(args) -> int:
    from pipec.completion import script
    sys.stdout.write(script(args.shell, build_parser(), _backend_names()))
    return EXIT_OK


_COMMANDS = {"check": cmd_check, "compile": cmd_compile, "graph": cmd_graph, "run": cmd_run,
             "fmt": cmd_fmt, "lsp": cmd_lsp, "backends": cmd_backends, "runs": cmd_runs,
             "completion": cmd_completion}


def entry() -> None:
    """Console-script entry point: runs the command, then ends the process with its exit
    code. Before the interpreter's teardown, every object left is frozen out of the
    garbage collector's reach (``gc.freeze``): the collections Python makes at exit would
    only walk a heap the process is about to give back, and after a run on an engine that
    heap is big (Dask's, numpy's and the run's objects: 0.36 s of teardown, 0.05 s frozen,
    measured on benchmarks/paramserver.pipe). The teardown itself still happens: exit
    handlers run, and objects outside reference cycles are released (open files flushed)."""
    code = main()
    import gc
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
