"""How long `pipec check` takes, and how long the language server takes to re-check a
1,000-line file after an edit; where the time goes.

    python -m benchmarks.check_latency            # all figures
    python -m benchmarks.check_latency --runs 20  # more runs per figure

Targets (issue 14): `pipec check examples/train.pipe` in at most 0.25 s of wall time;
the server re-checks a 1,000-line file in under 100 ms. Figures are printed, never
asserted: the machine's load moves them (CPU time is shown beside wall time for that
reason), and tests must not fail on a busy machine.

What is measured:

1. ``python -m pipec check examples/train.pipe`` end to end, in fresh processes (the
   interpreter's own start-up, ``python -c pass``, is shown for scale), with pipec's
   bytecode cached as an installed pipec has it, and once without (every module
   compiled from source, as under PYTHONDONTWRITEBYTECODE);
2. where that time goes: ``-X importtime`` self times attributed to the package that
   caused each import, then parsing and building in the same process;
3. the server: a 1,000-line pipeline opened in ``pipec lsp`` over stdio, then edited
   one character at a time (a digit replaced; a character typed, which moves every
   statement below it); the figure is the time from sending ``didChange`` to receiving
   its ``publishDiagnostics``, and, in process, the time of
   :meth:`pipec.lsp.document.Document.update` alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "train.pipe"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
# An installed pipec has its bytecode compiled. Where PYTHONDONTWRITEBYTECODE is set (as
# in some sandboxes), every run would compile pipec's modules from source, ~100 ms that
# no user pays: the figures use a bytecode cache outside the checkout instead, and the
# first figure shows the cost without one.
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
ENV["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "pipec-benchmark-pycache")
NO_CACHE_ENV = {**ENV, "PYTHONDONTWRITEBYTECODE": "1"}
del NO_CACHE_ENV["PYTHONPYCACHEPREFIX"]

# Import attribution: the first of these prefixes found walking up from a module.
GROUPS = ("networkx", "pydantic_core", "pydantic", "lark", "pipec.compiler.ir", "pipec.compiler", "pipec.dsl",
          "pipec.cli", "pipec.check_formats", "pipec.checking", "pipec.api", "pipec", "site")


def _timed_runs(argv: list[str], runs: int, env: dict | None = None) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system of the child) seconds of ``runs`` fresh processes."""
    walls, cpus = [], []
    for _ in range(runs):
        before = os.times()
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, env=env or ENV, capture_output=True, check=False)
        walls.append(time.perf_counter() - start)
        after = os.times()
        cpus.append((after.children_user - before.children_user) + (after.children_system - before.children_system))
    return walls, cpus


def _show(label: str, walls: list[float], cpus: list[float] | None = None) -> None:
    text = f"{label:<44} wall min {1000 * min(walls):6.0f} ms  median {1000 * statistics.median(walls):6.0f} ms"
    if cpus:
        text += f"  | cpu min {1000 * min(cpus):6.0f} ms  median {1000 * statistics.median(cpus):6.0f} ms"
    print(text)


def cli_latency(runs: int) -> None:
    """Print the wall and CPU time of `pipec check` (and `fmt --check`) in fresh processes."""
    print(f"== pipec check {EXAMPLE.relative_to(ROOT)} ({runs} fresh processes each)")
    check = [sys.executable, "-m", "pipec", "check", str(EXAMPLE)]
    subprocess.run(check, cwd=ROOT, env=ENV, capture_output=True)  # fills the bytecode cache
    _show("python -c pass", *_timed_runs([sys.executable, "-c", "pass"], runs))
    _show("  ... without bytecode cache (from source)", *_timed_runs(check, runs, NO_CACHE_ENV))
    _show("python -m pipec check examples/train.pipe", *_timed_runs(
        [sys.executable, "-m", "pipec", "check", str(EXAMPLE)], runs))
    _show("  ... --format json", *_timed_runs(
        [sys.executable, "-m", "pipec", "check", "--format", "json", str(EXAMPLE)], runs))
    _show("python -m pipec fmt --check (the fmt hook)", *_timed_runs(
        [sys.executable, "-m", "pipec", "fmt", "--check", str(EXAMPLE)], runs))


def import_breakdown(runs: int) -> None:
    """Self import times attributed to the group that caused them (median over runs)."""
    print("== where the import time goes (self time, attributed to the importing package; median)")
    totals: dict[str, list[float]] = {}
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipec", "check", str(EXAMPLE)],
                              cwd=ROOT, env=ENV, capture_output=True, text=True)
        for group, micros in _attribute(done.stderr).items():
            totals.setdefault(group, []).append(micros / 1000)
    rows = sorted(((statistics.median(v), k) for k, v in totals.items()), reverse=True)
    for ms, group in rows:
        print(f"  {group:<24} {ms:7.1f} ms")
    print(f"  {'all imports':<24} {sum(ms for ms, _ in rows):7.1f} ms")


def _attribute(importtime: str) -> dict[str, float]:
    """Parse ``-X importtime`` output (children before parents, indented by depth) and
    give each group the self time of every module imported under it."""
    entries = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        fields = line[len("import time:"):].split("|")
        name = fields[2]
        entries.append(((len(name) - len(name.lstrip(" ")) - 1) // 2, name.strip(), int(fields[0])))
    out: dict[str, float] = {}
    # Walk in reverse (parents first): keep the stack of ancestors at each depth.
    stack: list[str] = []
    for depth, name, self_us in reversed(entries):
        del stack[depth:]
        stack.append(name)
        group = next((g for ancestor in reversed(stack) for g in GROUPS
                      if ancestor == g or ancestor.startswith(g + ".")), "other (stdlib)")
        out[group] = out.get(group, 0) + self_us
    return out


PHASES = r"""
import sys, time, gc
t0 = time.perf_counter()
import pipec.cli
t1 = time.perf_counter()
from pipec.dsl.parser import parse, _parser
from pipec.dsl.source import SourceFile
t2 = time.perf_counter()
import pipec.compiler.ir
t3 = time.perf_counter()
from pipec.compiler.build import Builder
import pipec.api, pipec.checking, pipec.check_formats
t4 = time.perf_counter()
_parser()
t5 = time.perf_counter()
source = SourceFile.read(sys.argv[1])
module = parse(source)
t6 = time.perf_counter()
builder = Builder(module, source)
builder.build()
t7 = time.perf_counter()
import networkx
builder.ir.graph
t8 = time.perf_counter()
print(" ".join(str(x) for x in (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t8 - t7)))
"""
PHASE_NAMES = ("import pipec.cli", "import lark + parser + AST", "define the IR models (compiler/ir.py)",
               "import builder, API, checking", "load the Lark parser (disk cache)", "parse train.pipe",
               "build + check train.pipe", "(not in check) networkx + IR.graph")


def phases(runs: int) -> None:
    """Print each step of the check path, timed in one fresh process per run."""
    print("== the check path in one process, step by step (median)")
    samples = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", PHASES, str(EXAMPLE)], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, check=True)
        samples.append([float(x) for x in done.stdout.split()])
    for i, name in enumerate(PHASE_NAMES):
        print(f"  {name:<40} {1000 * statistics.median(s[i] for s in samples):7.1f} ms")


def thousand_lines() -> str:
    """A 1,000-line pipeline over examples/text.py: word-count chains side by side."""
    lines = ["use examples.text as t", "", 'pipeline big(path: str = "examples/data/corpus.txt", n: int = 20) {',
             "    source lines = read_text(path) partitions 4"]
    i = 0
    while len(lines) + 4 < 1000:
        lines += [f"    stage words_{i} = flat_map t.words over lines retries 2" + ("  # note" if i == 0 else ""),
                  f"    stage pairs_{i} = map t.one over words_{i}",
                  f"    stage counts_{i} = reduce_by_key t.add over pairs_{i}",
                  f'    sink top_{i} = top(counts_{i}, n, by = t.count) -> json("out/top_{i}.json")']
        i += 1
    lines += ["    # the end"] * (999 - len(lines))
    return "\n".join(lines + ["}"]) + "\n"


# Two kinds of edit on line 5 (the first stage): a digit replaced (every other statement
# stays where it was) and a character typed into a comment (every statement below moves).
def _edits(text: str, runs: int):
    line = text.split("\n").index(next(l for l in text.split("\n") if "# note" in l))
    digit = text.split("\n")[line].index("retries 2") + len("retries ")
    end = len(text.split("\n")[line])
    return [("a digit replaced", line, digit, digit + 1, lambda k: str(k % 9 + 1)),
            ("a character typed (all below move)", line, end, end, lambda k: "x")], runs


def server_in_process(runs: int) -> None:
    """Print how long Document.update takes on the 1,000-line file after each kind of edit."""
    from pipec.lsp.document import Document

    text = thousand_lines()
    print(f"== the server re-checking a {text.count(chr(10))}-line file after an edit ({runs} edits each)")
    edits, runs = _edits(text, runs)
    for label, line, start, end, new in edits:
        doc = Document(str(ROOT / "big.pipe"))
        current = text
        doc.update(current)
        walls, cpus = [], []
        for k in range(runs):
            lines = current.split("\n")
            lines[line] = lines[line][:start] + new(k) + lines[line][end:]
            if start == end:  # typing: the next character goes after this one
                start = end = end + 1
            current = "\n".join(lines)
            begin, cpu = time.perf_counter(), time.process_time()
            analysis = doc.update(current)
            walls.append(time.perf_counter() - begin)
            cpus.append(time.process_time() - cpu)
            assert not analysis.report.errors
        _show(f"in process, {label}", walls, cpus)


class _Rpc:
    """Just enough JSON-RPC over stdio to time a real `pipec lsp`."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "pipec", "lsp"], cwd=ROOT, env=ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.next_id = 0

    def send(self, method: str, params, request: bool = False):
        """Send a notification, or a request (its id is returned)."""
        message = {"jsonrpc": "2.0", "method": method, "params": params}
        if request:
            self.next_id += 1
            message["id"] = self.next_id
        body = json.dumps(message).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()
        return message.get("id")

    def receive(self) -> dict:
        """The next message from the server."""
        length = 0
        while True:
            line = self.proc.stdout.readline()
            if line in (b"\r\n", b"\n"):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return json.loads(self.proc.stdout.read(length))

    def wait(self, predicate) -> dict:
        """The first message for which ``predicate`` is true; earlier ones are dropped."""
        while True:
            message = self.receive()
            if predicate(message):
                return message

    def close(self) -> None:
        """Shut the server down and wait for it to exit."""
        self.send("shutdown", None, request=True)
        self.send("exit", None)
        self.proc.wait(timeout=30)


def server_over_stdio(runs: int) -> None:
    """Print the time from didChange to its publishDiagnostics from a real `pipec lsp`."""
    text = thousand_lines()
    edits, runs = _edits(text, runs)
    for label, line, start, end, new in edits:
        uri = (ROOT / f"big-{len(label)}.pipe").as_uri()
        rpc = _Rpc()
        try:
            ident = rpc.send("initialize", {"processId": os.getpid(), "rootUri": ROOT.as_uri(), "capabilities": {}},
                             True)
            rpc.wait(lambda m: m.get("id") == ident)
            rpc.send("initialized", {})
            rpc.send("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "pipe", "version": 1,
                                                               "text": text}})
            rpc.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics")
            walls = []
            for k in range(runs):
                version = k + 2
                begin = time.perf_counter()
                rpc.send("textDocument/didChange", {
                    "textDocument": {"uri": uri, "version": version},
                    "contentChanges": [{"range": {"start": {"line": line, "character": start},
                                                  "end": {"line": line, "character": end}}, "text": new(k)}]})
                if start == end:
                    start = end = end + 1
                message = rpc.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                                   and m["params"].get("version") == version)
                walls.append(time.perf_counter() - begin)
                assert not any(d["severity"] == 1 for d in message["params"]["diagnostics"]), message
        finally:
            rpc.close()
        _show(f"over stdio, {label}", walls)


def main() -> None:
    """Run every measurement; --runs sets how many samples each figure takes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    os.chdir(ROOT)
    cli_latency(args.runs)
    phases(args.runs)
    import_breakdown(max(3, args.runs // 2))
    try:
        import pygls  # noqa: F401
    except ImportError:
        print("== the server: not measured (pip install 'pipec[lsp]')")
        return
    server_in_process(args.runs)
    server_over_stdio(args.runs)


if __name__ == "__main__":
    main()
