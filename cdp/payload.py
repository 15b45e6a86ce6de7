"""The limits every free-form JSON value the platform stores must meet, checked once, at the door.

What passes here can be turned by every later step into what it needs: a protobuf `Struct` (whose parser stops
at 100 levels, and a read wraps a stored value in a few more), JSON again (orjson: no lone surrogates, integers
within 64 bits), and SQL (PostgreSQL text and jsonb refuse U+0000; a double holds no `1e400`). A value that does
not is refused with the path of what broke the rule, so the sender learns which field to fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

MAX_DEPTH = 32
"""Levels of objects and arrays a stored value may nest (`{"a": {"b": 1}}` is 2)."""

MAX_INTEGER = 2**63 - 1
MIN_INTEGER = -(2**63)

# Lone UTF-16 surrogates (unencodable as UTF-8) and NUL (refused by PostgreSQL's text and jsonb).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def problems(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Each `(path, description)` of `value` that breaks a limit; nothing when it may be stored."""
    yield from _walk(value, path, 1)


def _walk(value: Any, path: str, depth: int) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            yield path, f"holds {_unstorable(value)}"
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not MIN_INTEGER <= value <= MAX_INTEGER:
            yield path, "is an integer beyond 64 bits; send it as a string"
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield path, "is not a finite number (too large for a double, or NaN/Infinity)"
    elif isinstance(value, dict):
        if depth > MAX_DEPTH:
            yield path, f"nests more than {MAX_DEPTH} levels of objects and arrays"
            return
        for key, item in value.items():
            if not isinstance(key, str):
                yield path, "has a key that is not a string"
                continue
            if _UNSTORABLE.search(key):
                yield path, f"has a key holding {_unstorable(key)}"
                continue
            yield from _walk(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list | tuple):
        if depth > MAX_DEPTH:
            yield path, f"nests more than {MAX_DEPTH} levels of objects and arrays"
            return
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]", depth + 1)
    else:
        yield path, f"is a {type(value).__name__}, not a JSON value"


def _unstorable(text: str) -> str:
    match = _UNSTORABLE.search(text)
    assert match is not None
    if match.group() == "\x00":
        return "a NUL character (U+0000), which cannot be stored"
    return "a lone UTF-16 surrogate, which is not text"


def repaired(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """`value` with whatever breaks a limit replaced, and the paths replaced; it never raises.

    Values stored before these limits existed (or by a producer no door checked) must still be readable, so a read
    repairs instead of failing: too deep → null, a non-finite number or an integer beyond 64 bits → null, a NUL or
    lone surrogate in text → U+FFFD, a key that is not text → its string form.
    """
    found: list[str] = []
    return _repair(value, path, 1, found), found


def _repair(value: Any, path: str, depth: int, found: list[str]) -> Any:
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            found.append(path)
            return _UNSTORABLE.sub("\ufffd", value)
        return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if MIN_INTEGER <= value <= MAX_INTEGER:
            return value
        found.append(path)
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        found.append(path)
        return None
    if isinstance(value, dict | list | tuple) and depth > MAX_DEPTH:
        found.append(path)
        return None
    if isinstance(value, dict):
        clean: dict[str, Any] = {}
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            if _UNSTORABLE.search(name):
                name = _UNSTORABLE.sub("\ufffd", name)
            where = f"{path}.{name}" if path else name
            if name is not key:
                found.append(where)
            clean[name] = _repair(item, where, depth + 1, found)
        return clean
    if isinstance(value, list | tuple):
        return [_repair(item, f"{path}[{index}]", depth + 1, found) for index, item in enumerate(value)]
    found.append(path)
    return None
