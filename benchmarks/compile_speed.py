"""Compile speed: parse, build (name resolution, shape checks, IR) and backend checks for
generated pipelines of 100, 1,000 and 10,000 stages, and the garbage collection that
work leaves behind (the collector is off while it runs, see pipec.api._few_collections).

Run: ``python benchmarks/compile_speed.py [--sizes 100 1000 10000] [--repeat 3]``.
Prints the median seconds of each phase and the cost per stage, so linear growth shows
as a flat last column; the CPU seconds of the whole beside them, which a busy machine
moves less than the wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipec.api import _few_collections  # noqa: E402
from pipec.compiler.build import Builder  # noqa: E402
from pipec.dsl.parser import parse  # noqa: E402
from pipec.dsl.source import SourceFile  # noqa: E402

MODULE = '''
def f(x, k=1):
    return x + k

def add(a, b):
    return a + b

class Acc:
    def __init__(self):
        self.total = 0
    def push(self, v):
        self.total += v
    def value(self):
        return self.total
'''


def generate(stages: int) -> str:
    """A pipeline with ``stages`` stages: chains of maps, a reduction and an actor call
    every 10 stages, half of them inside a loop."""
    lines = ["use m as m", "", "pipeline big(n: int = 100, k: int = 2) {",
             "    source s0 = range(n) partitions 4", "    actor acc = m.Acc()"]
    half = stages // 2
    for i in range(1, stages + 1):
        if i == half + 1:
            lines.append("    repeat 3 {")
        pad = "        " if i > half else "    "
        lines.append(f"{pad}stage s{i} = map m.f over s{i - 1} with k = k")
        if i % 10 == 0:
            lines.append(f"{pad}value v{i} = reduce m.add over s{i}")
            lines.append(f"{pad}acc.push(v{i})")
    if stages > half:
        lines.append("    }")
    lines.append("    sink out = acc.value()")
    lines.append("}")
    return "\n".join(lines) + "\n"


def measure(stages: int, repeat: int, folder: Path) -> dict[str, float]:
    path = folder / f"big{stages}.pipe"
    path.write_text(generate(stages))
    source = SourceFile(str(path), path.read_text())
    times: dict[str, list[float]] = {"parse": [], "build": [], "backend check": [], "collector after": [],
                                     "total": [], "cpu": []}
    for _ in range(repeat):
        cpu = time.process_time()
        t0 = time.perf_counter()
        with _few_collections():  # the collector off, as pipec.api.load_source has it
            module = parse(source)
            t1 = time.perf_counter()
            builder = Builder(module, source)
            graph = builder.build()
            t2 = time.perf_counter()
            assert not [d for d in builder.diagnostics if d.is_error], builder.diagnostics[:3]
            from pipec.backends import get_backend
            get_backend("local").check(graph)  # inside, as pipec.checking.check_source does
            t3 = time.perf_counter()
        # The collector is back on: the first allocation after the block pays for looking
        # through every object the front end made once (a gen-0 collection). It is part
        # of the cost, so it is timed too.
        [[] for _ in range(10)]
        t4 = time.perf_counter()
        times["parse"].append(t1 - t0)
        times["build"].append(t2 - t1)
        times["backend check"].append(t3 - t2)
        times["collector after"].append(t4 - t3)
        times["total"].append(t4 - t0)
        times["cpu"].append(time.process_time() - cpu)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "m.py").write_text(MODULE)
        measure(10, 1, folder)  # warm up: grammar cache, imports
        print(f"{'stages':>8} {'parse s':>9} {'build s':>9} {'backend s':>10} {'gc s':>7} {'total s':>9}"
              f" {'us/stage':>9} {'cpu s':>7}")
        for n in args.sizes:
            m = measure(n, args.repeat, folder)
            print(f"{n:>8} {m['parse']:>9.3f} {m['build']:>9.3f} {m['backend check']:>10.3f} "
                  f"{m['collector after']:>7.3f} "
                  f"{m['total']:>9.3f} {m['total'] / n * 1e6:>9.0f} {m['cpu']:>7.3f}")


if __name__ == "__main__":
    main()
