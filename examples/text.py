"""Word counting helpers."""

import re

_WORD = re.compile(r"[a-z']+")


def words(line: str) -> list[str]:
    return _WORD.findall(line.lower())


def one(word: str):
    return word, 1


def add(a: int, b: int) -> int:
    return a + b


def count(pair) -> int:
    return pair[1]
