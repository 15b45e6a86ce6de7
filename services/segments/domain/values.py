"""How a JSON document (traits, event properties, a computed value) is seen by conditions: as typed leaves.

Both evaluators see documents the same way. The read model stores each document's leaves as rows
(`segments_leaves`: path, kind, num, text, key, time, item) that SQL compares column by column; the Python
evaluator compares the very same `Leaf` values. So `"20" > 10` is false in both (a string is not a number),
and `1` equals `1.0` in both.

A document's leaves, for `{"plan": "pro", "age": 41, "tags": ["a", "b"], "address": {"country": "FR"}}`:

| path | kind | item |
|---|---|---|
| plan | string | no |
| age | number | no |
| tags | list | no |
| tags | string | yes (one per element) |
| address | object | no |
| address.country | string | no |

A value that is not a document (a computed trait's number) has one leaf at path "".
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.segments.domain.conditions import POSITIVE_OF, Op, Scalar, ValueCond

NUMBER, STRING, BOOL, NULL, LIST, OBJECT = "number", "string", "bool", "null", "list", "object"
SCALAR_KINDS = frozenset({NUMBER, STRING, BOOL})
TEXT_LIMIT = 512
"""Strings are compared on their first 512 characters (longer ones are cut in the read model and here alike)."""
MAX_LEAF_DEPTH = 8
"""Paths deeper than this are not conditions' business (and would make a row per leaf explode)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Leaf:
    """One typed value at a path of a document."""

    path: str
    kind: str
    num: float | None = None
    """number: its value; bool: 1.0 or 0.0."""
    text: str | None = None
    """string: its value (cut to `TEXT_LIMIT`)."""
    key: str | None = None
    """Scalars: kind and value in one canonical text (what "distinct values" and "most frequent" count)."""
    time: int | None = None
    """string: the instant it names (µs since the epoch) when it is an ISO-8601 timestamp with an offset."""
    item: bool = False
    """An element of the list at `path`, not the value at `path`."""


def flatten(value: Any, path: str = "", depth: int = 0) -> Iterator[Leaf]:
    """The leaves of a JSON value (see the module's table).

    A path names at most one value: when two keys spell the same path (`{"a.b": 1, "a": {"b": 2}}`), the first
    value met wins, with its list's elements, and the later one is left out (so the read model's rows and a
    `Doc` see the same single value)."""
    seen: set[str] = set()
    kept = True
    for leaf in _leaves(value, path, depth):
        if not leaf.item:
            kept = leaf.path not in seen
            seen.add(leaf.path)
        if kept:
            yield leaf


def _leaves(value: Any, path: str, depth: int) -> Iterator[Leaf]:
    if isinstance(value, Mapping):
        if path:
            yield Leaf(path, OBJECT)
        if depth >= MAX_LEAF_DEPTH:
            return
        for name, child in value.items():
            yield from _leaves(child, f"{path}.{name}" if path else str(name), depth + 1)
    elif isinstance(value, list | tuple):
        yield Leaf(path, LIST)
        for element in value:
            leaf = scalar_leaf(path, element, item=True)
            if leaf is not None:
                yield leaf
    else:
        leaf = scalar_leaf(path, value)
        if leaf is not None:
            yield leaf


def scalar_leaf(path: str, value: Any, *, item: bool = False) -> Leaf | None:
    """The leaf of one scalar (None for what is not one: an object or list inside a list)."""
    if value is None:
        return Leaf(path, NULL, item=item)
    if isinstance(value, bool):
        return Leaf(path, BOOL, num=1.0 if value else 0.0, key=f"b:{int(value)}", item=item)
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            return None
        return Leaf(path, NUMBER, num=number, key=f"n:{number!r}", item=item)
    if isinstance(value, str):
        text = value[:TEXT_LIMIT]
        return Leaf(path, STRING, text=text, key=f"s:{text}", time=instant(text), item=item)
    return None


def instant(text: str) -> int | None:
    """µs since the epoch of an ISO-8601 timestamp that names its offset (`Z` or `+02:00`), else None."""
    if not 10 <= len(text) <= 40 or not text[:4].isdigit() or text[4:5] != "-":
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def value_of(leaf: Leaf) -> Scalar:
    """The JSON value a scalar leaf holds."""
    if leaf.kind == NUMBER:
        number = leaf.num
        return int(number) if number is not None and number.is_integer() and abs(number) < 2**53 else number
    if leaf.kind == BOOL:
        return leaf.num == 1.0
    if leaf.kind == STRING:
        return leaf.text
    return None


class Doc:
    """A document's leaves by path: the value at a path (at most one) and the elements of a list there.

    `Doc.of` flattens lazily, on the first look at a path: most conditions on an event read its name and time,
    never its properties, and the evaluator builds a Doc for every message of every profile it evaluates.
    """

    __slots__ = ("_items", "_raw", "_values")
    _values: dict[str, Leaf] | None
    _items: dict[str, list[Leaf]] | None

    def __init__(self, leaves: Iterator[Leaf] | list[Leaf] | tuple[Leaf, ...]) -> None:
        self._raw: Any = None
        self._fill(leaves)

    @classmethod
    def of(cls, value: Any) -> Doc:
        """The document of a JSON value."""
        doc = cls.__new__(cls)
        doc._raw, doc._values, doc._items = value, None, None
        return doc

    def _fill(self, leaves: Iterator[Leaf] | list[Leaf] | tuple[Leaf, ...]) -> None:
        values: dict[str, Leaf] = {}
        items: dict[str, list[Leaf]] = {}
        for leaf in leaves:
            if leaf.item:
                items.setdefault(leaf.path, []).append(leaf)
            else:
                values[leaf.path] = leaf
        self._values, self._items = values, items

    @property
    def values(self) -> dict[str, Leaf]:
        """The value at each path."""
        if self._values is None:
            self._fill(flatten(self._raw))
        assert self._values is not None
        return self._values

    @property
    def items(self) -> dict[str, list[Leaf]]:
        """The elements of the list at each path."""
        if self._items is None:
            self._fill(flatten(self._raw))
        assert self._items is not None
        return self._items


EMPTY = Doc(())


def holds(cond: ValueCond, doc: Doc, now: int) -> bool:
    """Whether the value at `cond.path` satisfies the condition at evaluation time `now` (µs)."""
    positive = POSITIVE_OF.get(cond.op)
    if positive is not None:
        return not holds(ValueCond(cond.path, positive, cond.value, cond.band), doc, now)
    leaf = doc.values.get(cond.path)
    op = cond.op
    if op is Op.CONTAINS:
        return _contains(leaf, doc.items.get(cond.path, ()), cond.value)
    if leaf is None:
        return False
    if op is Op.EXISTS:
        return leaf.kind != NULL
    if op is Op.EQ:
        return equals(leaf, cond.value)
    if op is Op.IN:
        values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
        return any(equals(leaf, value) for value in values)
    if op is Op.WITHIN_LAST:
        seconds = cond.value
        if leaf.time is None or not isinstance(seconds, int | float) or isinstance(seconds, bool):
            return False
        return leaf.time >= now - int(seconds * 1_000_000)
    if op is Op.IN_BAND:
        band = cond.band
        if band is None or leaf.kind != NUMBER or leaf.num is None:
            return False
        return (band.lower is None or leaf.num >= band.lower) and (
            band.upper is None or leaf.num < band.upper
        )
    if op is Op.STARTS_WITH:
        return leaf.kind == STRING and isinstance(cond.value, str) and _text(leaf).startswith(cond.value)
    if op is Op.ENDS_WITH:
        return leaf.kind == STRING and isinstance(cond.value, str) and _text(leaf).endswith(cond.value)
    return ordered(leaf, op, cond.value)


def equals(leaf: Leaf, value: Any) -> bool:
    """The leaf holds this scalar: same kind, same value (numbers as floats)."""
    if value is None:
        return leaf.kind == NULL
    if isinstance(value, bool):
        return leaf.kind == BOOL and leaf.num == (1.0 if value else 0.0)
    if isinstance(value, int | float):
        return leaf.kind == NUMBER and leaf.num == float(value)
    if isinstance(value, str):
        return leaf.kind == STRING and leaf.text == value[:TEXT_LIMIT]
    return False


def ordered(leaf: Leaf, op: Op, value: Any) -> bool:
    """`<`, `<=`, `>`, `>=`: numbers with numbers, strings with strings (by code point), nothing else."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        if leaf.kind != NUMBER or leaf.num is None:
            return False
        left: Any = leaf.num
        right: Any = float(value)
    elif isinstance(value, str):
        if leaf.kind != STRING:
            return False
        left, right = _text(leaf), value[:TEXT_LIMIT]
    else:
        return False
    if op is Op.LT:
        return bool(left < right)
    if op is Op.LE:
        return bool(left <= right)
    if op is Op.GT:
        return bool(left > right)
    if op is Op.GE:
        return bool(left >= right)
    raise ValueError(f"{op} is not an ordering")


def _contains(leaf: Leaf | None, items: Any, value: Any) -> bool:
    if leaf is not None and leaf.kind == STRING and isinstance(value, str) and value in _text(leaf):
        return True
    return any(equals(item, value) for item in items)


def _text(leaf: Leaf) -> str:
    return leaf.text or ""
