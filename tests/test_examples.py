"""Every example runs, and its result matches an independent plain-Python computation."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pipec import load
from tests.conftest import EXAMPLES

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.pipe"))


def test_every_example_is_covered():
    """A new example must get an independent check here."""
    assert {p.stem for p in EXAMPLE_FILES} == set(CHECKS)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_checks_clean(path):
    pipeline = load(path)
    assert [d for d in pipeline.check() if d.is_error] == []


def _run(name: str, **params):
    result = load(Path("examples") / f"{name}.pipe").run(backend="local", params=params)
    return result


def check_train(workdir):
    import numpy as np
    from examples.linreg import make_batches

    rows, epochs, rate = 4_000, 5, 0.1
    result = _run("train", rows=rows, epochs=epochs, rate=rate)
    got = np.array(json.loads(Path(result.files["weights"]).read_text()))
    # Plain numpy: full-batch gradient descent on the same data.
    batches = make_batches(rows, 10, 0)
    X = np.vstack([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    w = np.zeros(10)
    for _ in range(epochs):
        w = w - rate * (X.T @ (X @ w - y)) / len(y)
    np.testing.assert_allclose(got, w, rtol=1e-9, atol=1e-12)


def check_evaluate(workdir):
    import numpy as np
    from examples.linreg import make_batches, make_held_out

    rows, epochs, rate, every, save = 4_000, 8, 0.1, 3, 4
    result = _run("evaluate", rows=rows, epochs=epochs, rate=rate, every=every, save=save)
    batches, held = make_batches(rows, 10, 0), make_held_out(2_000, 10, 0)
    X, y = np.vstack([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    Xh, yh = np.vstack([b[0] for b in held]), np.concatenate([b[1] for b in held])
    w, evals, saved = np.zeros(10), {}, {}
    for epoch in range(epochs):
        w = w - rate * (X.T @ (X @ w - y)) / len(y)
        if (epoch + 1) % every == 0:
            evals[f"out/eval-{epoch}.json"] = [epoch + 1, float(np.mean((Xh @ w - yh) ** 2))]
        if (epoch + 1) % save == 0:
            saved[f"out/weights-{epoch}.json"] = w
    tables = [path.replace("eval-", "errors-").removesuffix(".json") for path in evals]
    assert result.round_files == {"eval": list(evals), "errors": tables, "checkpoint": list(saved)}
    import pyarrow.parquet as pq
    for (path, (n, error)), table in zip(evals.items(), tables):
        got = json.loads(Path(path).read_text())
        assert got[0] == n and math.isclose(got[1], error, rel_tol=1e-9)
        rows = pq.read_table(table).to_pylist()  # one row per held-out batch, committed whole
        assert (Path(table) / "_SUCCESS").exists() and {r["epoch"] for r in rows} == {n}
        assert math.isclose(sum(r["sse"] for r in rows) / sum(r["rows"] for r in rows), error, rel_tol=1e-9)
    best = min(evals.values(), key=lambda e: e[1])
    got = json.loads(Path(result.files["best"]).read_text())
    assert got[0] == best[0] and math.isclose(got[1], best[1], rel_tol=1e-9)
    for path, weights in saved.items():
        np.testing.assert_allclose(json.loads(Path(path).read_text()), weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(json.loads(Path(result.files["weights"]).read_text()), w, rtol=1e-9, atol=1e-12)


def check_wordcount(workdir):
    result = _run("wordcount", n=7)
    got = json.loads(Path(result.files["top_words"]).read_text())
    import re
    counts = Counter(w for line in Path("examples/data/corpus.txt").read_text().splitlines()
                     for w in re.findall(r"[a-z']+", line.lower()))
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:7]
    assert [tuple(x) for x in got] == expected


def check_infer(workdir):
    result = _run("infer", n=1_000)
    lines = Path(result.files["out"]).read_text().splitlines()
    got = [json.loads(line) for line in lines]
    import random
    rng = random.Random(0)
    weight, bias = round(rng.uniform(0.5, 1.5), 6), round(rng.uniform(-1, 1), 6)
    assert got == [{"id": i, "score": round(i * weight + bias, 6)} for i in range(1_000)]


def check_pagerank(workdir):
    rounds = 6
    result = _run("pagerank", rounds=rounds)
    got = dict(json.loads(Path(result.files["ranks_out"]).read_text()))
    edges = {tuple(line.split()[:2]) for line in Path("examples/data/links.txt").read_text().splitlines() if line}
    links = defaultdict(list)
    for src, dst in sorted(edges):
        links[src].append(dst)
    n = len(links)
    ranks = {page: 1.0 for page in links}
    for _ in range(rounds):
        incoming = defaultdict(float)
        for page, rank in ranks.items():
            for dst in links[page]:
                incoming[dst] += rank / len(links[page])
        ranks = {page: 0.15 / n + 0.85 * total for page, total in incoming.items()}
    assert got.keys() == ranks.keys()
    for page in ranks:
        assert math.isclose(got[page], ranks[page], rel_tol=1e-12)
    assert list(got) == sorted(got), "keyed output comes sorted by key"


def check_kmeans(workdir):
    result = _run("kmeans", points=600)
    got = json.loads(Path(result.files["centres"]).read_text())
    from examples.kmeans import make_points
    import random
    points = make_points(600, 1)
    rng = random.Random(1)
    centres = [(rng.uniform(-1, 6), rng.uniform(-1, 7)) for _ in range(3)]
    rounds = 0
    for rounds in range(1, 21):
        sums = defaultdict(lambda: [0.0, 0.0, 0])
        for p in points:
            best = min(range(3), key=lambda i: math.dist(p, centres[i]))
            sums[best][0] += p[0]
            sums[best][1] += p[1]
            sums[best][2] += 1
        new = list(centres)
        for c, (sx, sy, count) in sums.items():
            new[c] = (sx / count, sy / count)
        moved = max(math.dist(a, b) for a, b in zip(centres, new))
        centres = new
        if moved < 1e-4:
            break
    assert result.rounds["loop1"] == rounds < 20
    for (gx, gy), (ex, ey) in zip(got, centres):
        assert math.isclose(gx, ex, rel_tol=1e-9) and math.isclose(gy, ey, rel_tol=1e-9)


def check_digits(workdir):
    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    epochs, rate = 12, 0.5
    result = _run("digits", epochs=epochs, rate=rate)
    features = pq.read_table(result.files["features_out"]).to_pylist()
    scores = pq.read_table(result.files["scores_out"]).to_pylist()
    assert sorted(p.name for p in Path(result.files["scores_out"]).iterdir()) == \
        ["_SUCCESS"] + [f"part-{i:05d}.parquet" for i in range(4)]
    # Plain numpy: the same softmax regression by full-batch gradient descent.
    data = load_digits()
    x = np.hstack([data.data / 16.0, np.ones((len(data.data), 1))])
    y = np.eye(10)[data.target]
    w = np.zeros((65, 10))
    for _ in range(epochs):
        s = x @ w
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        w = w - rate * (x.T @ (p - y)) / len(x)
    predicted = (x @ w).argmax(axis=1)
    assert [r["id"] for r in features] == list(range(len(data.data)))
    np.testing.assert_allclose(np.array([r["x"] for r in features]), data.data / 16.0)
    assert [r["id"] for r in scores] == list(range(len(data.data)))
    assert [r["predicted"] for r in scores] == predicted.tolist()
    assert result.outputs["accuracy"] == (predicted == data.target).mean()


def check_ranking(workdir):
    import hashlib
    import re
    n, fraction = 6, 0.2
    result = _run("ranking", n=n, fraction=fraction)
    lines = Path("examples/data/corpus.txt").read_text().splitlines()
    counts = Counter(w for line in lines for w in re.findall(r"[a-z']+", line.lower()))
    # Stable by count: equal counts keep the keyed result's order, alphabetical.
    ranked = [((w, c), i) for i, (w, c) in enumerate(sorted(sorted(counts.items()), key=lambda kv: -kv[1]))]
    top = json.loads(Path(result.files["top"]).read_text())
    assert [((w, c), i) for (w, c), i in top] == ranked[:n]
    ranks = json.loads(Path(result.files["ranks"]).read_text())
    assert list(ranks.items()) == sorted((w, i) for (w, _), i in ranked)
    # The documented hash of (seed, position), by hand.
    kept = [line for i, line in enumerate(lines)
            if int.from_bytes(hashlib.blake2b(f"pipec.sample:1:{i}".encode(), digest_size=8).digest(), "little")
            < fraction * 2 ** 64]
    assert [json.loads(x) for x in Path(result.files["some_lines"]).read_text().splitlines()] == kept
    assert 0.1 < len(kept) / len(lines) < 0.3


CHECKS = {"digits": check_digits, "evaluate": check_evaluate, "train": check_train, "wordcount": check_wordcount,
          "infer": check_infer, "pagerank": check_pagerank, "kmeans": check_kmeans, "ranking": check_ranking}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_matches_plain_python(name, workdir):
    CHECKS[name](workdir)
