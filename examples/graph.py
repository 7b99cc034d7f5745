"""PageRank helpers, after the classic Spark example."""


def parse_edge(line: str):
    """``"a b"`` -> ("a", "b")."""
    src, dst = line.split()[:2]
    return src, dst


def one(neighbours) -> float:
    return 1.0


def contributions(record):
    """Each page sends its rank, split evenly, to the pages it links to."""
    _page, (neighbours, rank) = record
    share = rank / len(neighbours)
    return [(dst, share) for dst in neighbours]


def add(a: float, b: float) -> float:
    return a + b


def damp(total: float, n: int) -> float:
    """Damped rank: a random surfer jumps to any of the n pages with probability 0.15."""
    return 0.15 / n + 0.85 * total
