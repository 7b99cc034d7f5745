"""Ranking helpers: sort keys and (word, rank) pairs."""


def most_first(pair) -> int:
    """A word count's sort key: the larger count first."""
    return -pair[1]


def word_rank(ranked):
    """((word, count), rank) -> (word, rank)."""
    (word, _), rank = ranked
    return word, rank
