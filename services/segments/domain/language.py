"""The audience language: text ↔ condition trees (and computed traits' aggregates), with plain-word errors.

    traits.plan = "pro" and event("Order Completed").count(within 30d) >= 2 and not audience("churned")

docs/segments-language.md is the reference; `GRAMMAR` is its source of truth. Lark's LALR parser reads it with
the contextual lexer, so a word is a keyword only where a keyword may stand: `traits.last` and
`where in > 1` name a trait and a property. `render` writes the canonical text, and
`parse_condition(render(tree)) == tree` for every tree the parser can build (groups of two parts or more,
bands unresolved).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, NoReturn

from lark import (
    Lark,
    Token,
    Transformer_NonRecursive,
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
    v_args,
)
from lark.exceptions import VisitError
from lark.tree import Meta

from services.segments.domain import checks
from services.segments.domain.conditions import (
    MAX_DEPTH,
    Agg,
    Aggregate,
    And,
    AudienceCond,
    ComputedCond,
    Condition,
    ConsentCond,
    EventCond,
    EventSpec,
    Funnel,
    IdentifierCond,
    Not,
    Op,
    Or,
    Scalar,
    TraitCond,
    ValueCond,
    Window,
)
from services.segments.domain.errors import LanguageError

GRAMMAR = r"""
?condition: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: NOT not_expr                              -> negation
         | atom
?atom: _LPAR or_expr _RPAR
     | TRAITS segment+ test                          -> trait_cond
     | TRAIT _LPAR STRING _RPAR segment* test        -> computed_cond
     | spec                                          -> bare_event
     | spec aggregation test?                        -> event_cond
     | spec (THEN spec)+ (WITHIN DURATION)?          -> funnel
     | spec WITHIN DURATION                          -> lone_step
     | CONSENT _LPAR STRING _RPAR                    -> consent
     | AUDIENCE _LPAR STRING _RPAR                   -> audience
     | HAS_IDENTIFIER _LPAR STRING _RPAR             -> has_identifier

aggregate: spec aggregation?

spec: KIND _LPAR (STRING (_COMMA where)? | where)? _RPAR
where: WHERE where_cond (_AND where_cond)*
where_cond: (NAME | _LSQB STRING _RSQB) segment* test
segment: _DOT NAME | _LSQB STRING _RSQB
aggregation: _DOT NAME _LPAR (STRING (_COMMA window)? | window)? _RPAR
window: WITHIN DURATION | SINCE TIME | BEFORE TIME | BETWEEN TIME _AND TIME

test: CMP value | IN value | NOT IN value | WORD_OP value | EXISTS | NOT EXISTS
    | WITHIN LAST DURATION | IN BAND STRING
?value: scalar | list_value
list_value: _LSQB (item (_COMMA item)*)? _RSQB
scalar: STRING | NUMBER | BOOL | NULL
item: STRING | NUMBER | BOOL | NULL

_AND.2: /and(?!\w)/i
_OR.2: /or(?!\w)/i
NOT.2: /not(?!\w)/i
IN.2: /in(?!\w)/i
BAND.2: /band(?!\w)/i
WORD_OP.2: /(contains|starts_with|ends_with)(?!\w)/i
EXISTS.2: /exists(?!\w)/i
WITHIN.2: /within(?!\w)/i
LAST.2: /last(?!\w)/i
SINCE.2: /since(?!\w)/i
BEFORE.2: /before(?!\w)/i
BETWEEN.2: /between(?!\w)/i
THEN.2: /then(?!\w)/i
WHERE.2: /where(?!\w)/i
BOOL.2: /(true|false)(?!\w)/i
NULL.2: /null(?!\w)/i
TRAITS.2: /traits(?!\w)/i
TRAIT.2: /trait(?!\w)/i
KIND.2: /(event|page|screen|identify|group)(?!\w)/i
CONSENT.2: /consent(?!\w)/i
AUDIENCE.2: /audience(?!\w)/i
HAS_IDENTIFIER.2: /has_identifier(?!\w)/i
CMP: /!=|<=|>=|=|<|>/
DURATION.3: /-?[0-9]+(us|ms|w|d|h|m|s)(?!\w)/
TIME.3: /[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9:.]+(Z|[+-][0-9]{2}:[0-9]{2})?)?/
NUMBER: /-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?(?![\w.-])/
STRING: /"([^"\\\n\r]|\\.)*"/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
_LPAR: "("
_RPAR: ")"
_LSQB: "["
_RSQB: "]"
_COMMA: ","
_DOT: "."
COMMENT: /#[^\n]*/
WS: /\s+/
%ignore WS
%ignore COMMENT
"""

SECOND = 1_000_000
UNITS = {"w": 7 * 86_400 * SECOND, "d": 86_400 * SECOND, "h": 3_600 * SECOND, "m": 60 * SECOND}
UNITS |= {"s": SECOND, "ms": 1_000, "us": 1}
RENDERED_UNITS = ("d", "h", "m", "s", "ms", "us")
"""Weeks are read but never written: `within 7d` stays as a marketer wrote it."""
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OPS = {"=": Op.EQ, "!=": Op.NE, "<": Op.LT, "<=": Op.LE, ">": Op.GT, ">=": Op.GE}
OPS |= {"contains": Op.CONTAINS, "starts_with": Op.STARTS_WITH, "ends_with": Op.ENDS_WITH}
AGGS = {agg.value: agg for agg in Agg}

Pos = tuple[int, int]


@functools.cache
def _parser() -> Lark:
    return Lark(
        GRAMMAR,
        parser="lalr",
        lexer="contextual",
        start=["condition", "aggregate"],
        propagate_positions=True,
    )


def parse_condition(text: str) -> Condition:
    """An audience expression as a condition tree; LanguageError says where and why it cannot be."""
    node = _parse(text, "condition")
    assert not isinstance(node, Aggregate)
    return node


def parse_aggregate(text: str) -> Aggregate:
    """A computed trait expression (`event("Order Completed").sum("revenue", within 30d)`) as an aggregate."""
    node = _parse(text, "aggregate")
    assert isinstance(node, Aggregate)
    return node


def _parse(text: str, start: str) -> Condition | Aggregate:
    if not _scan(text):
        raise LanguageError(f"the expression is empty: expected {_phrase(_START[start])}", 1, 1, ())
    try:
        tree = _parser().parse(text, start=start)
    except UnexpectedInput as error:
        raise _syntax_error(text, error) from None
    try:
        built: Condition | Aggregate = _Build().transform(tree)
    except VisitError as error:
        if isinstance(error.orig_exc, LanguageError):
            raise error.orig_exc from None
        raise
    return built


# --- Building the tree ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Lit:
    """A value with where it was written."""

    value: Scalar | tuple[Scalar, ...]
    at: Pos


@dataclass(frozen=True, slots=True)
class _Test:
    """An operator and its value, with where each was written."""

    op: Op
    value: Scalar | tuple[Scalar, ...]
    at: Pos
    value_at: Pos


@dataclass(frozen=True, slots=True)
class _Method:
    """`.sum("revenue", within 30d)`."""

    agg: Agg
    property: str | None
    window: Window
    at: Pos


def _fail(message: str, at: Pos) -> NoReturn:
    raise LanguageError(message, at[0], at[1])


def _pos(item: Token | Meta) -> Pos:
    return (item.line or 1, item.column or 1)


def _string(token: Token) -> str:
    try:
        value = json.loads(token.value, strict=False)
    except json.JSONDecodeError:
        _fail(
            f"{token.value} has an invalid escape (strings use JSON's: \\\" \\\\ \\n \\t \\uXXXX)",
            _pos(token),
        )
    assert isinstance(value, str)
    return value


def _number(token: Token) -> int | float:
    text = token.value
    if not any(c in text for c in ".eE"):
        return int(text)
    number = float(text)
    if number in (float("inf"), float("-inf")):
        _fail(f"{text} is too large a number", _pos(token))
    return number


def _duration(token: Token) -> int:
    match = re.fullmatch(r"(-?)([0-9]+)(us|ms|w|d|h|m|s)", token.value)
    assert match is not None
    if match[1]:
        _fail(f"a duration cannot be negative: {token.value}", _pos(token))
    micros = int(match[2]) * UNITS[match[3]]
    if micros == 0:
        _fail(f"a duration must be longer than zero: {token.value}", _pos(token))
    return micros


def _time(token: Token) -> int:
    text = token.value
    try:
        moment = (
            datetime.fromisoformat(text)
            if "T" in text
            else datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        )
    except ValueError:
        _fail(f"{text} is not a date (YYYY-MM-DD) or a timestamp (YYYY-MM-DDTHH:MM:SSZ)", _pos(token))
    if moment.tzinfo is None:
        _fail(f"{text} needs its offset, e.g. {text}Z for UTC", _pos(token))
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND + delta.microseconds


class _Build(Transformer_NonRecursive[Token, Any]):
    """Lark's tree → condition nodes, refusing what the grammar lets through but the language does not."""

    def __init__(self) -> None:
        super().__init__()
        self._depths: dict[int, tuple[Condition, int]] = {}

    def _node(self, node: Condition, at: Pos, parts: Sequence[Condition] = ()) -> Condition:
        level = 1 + max((self._depths[id(part)][1] for part in parts), default=0)
        if level > MAX_DEPTH:
            _fail(
                f"conditions nest more than {MAX_DEPTH} levels deep here (and, or and not each add one)", at
            )
        self._depths[id(node)] = (node, level)
        return node

    @v_args(meta=True)
    def or_expr(self, meta: Meta, parts: list[Condition]) -> Condition:
        return self._node(Or(tuple(parts)), _pos(meta), parts)

    @v_args(meta=True)
    def and_expr(self, meta: Meta, parts: list[Condition]) -> Condition:
        return self._node(And(tuple(parts)), _pos(meta), parts)

    def negation(self, items: list[Any]) -> Condition:
        keyword, part = items
        return self._node(Not(part), _pos(keyword), [part])

    def trait_cond(self, items: list[Any]) -> Condition:
        keyword, *segments, test = items
        path = ".".join(segments)
        if not path:
            _fail("the trait's path is empty", _pos(keyword))
        return self._node(TraitCond(_value_cond(path, test)), _pos(keyword))

    def computed_cond(self, items: list[Any]) -> Condition:
        keyword, name, *segments, test = items
        trait_id = _string(name)
        if not trait_id:
            _fail("the computed trait's id is empty", _pos(name))
        if test.op is Op.IN_BAND:
            _fail("in band is for traits and event properties, not for computed traits", test.at)
        return self._node(ComputedCond(trait_id, _value_cond(".".join(segments), test)), _pos(keyword))

    @v_args(meta=True)
    def bare_event(self, meta: Meta, items: list[Any]) -> Condition:
        (spec,) = items
        return self._node(EventCond(Aggregate(spec), Op.GE, 1), _pos(meta))

    @v_args(meta=True)
    def event_cond(self, meta: Meta, items: list[Any]) -> Condition:
        spec, method, *rest = items
        problem = checks.inline_problem(method.agg)
        if problem is not None:
            _fail(problem, method.at)
        aggregate = Aggregate(spec, method.agg, method.property, method.window)
        if not rest:
            if method.agg is not Agg.COUNT:
                _fail(f"compare {method.agg.value}(…) with a value, e.g. {_EXAMPLES[method.agg]}", method.at)
            return self._node(EventCond(aggregate, Op.GE, 1), _pos(meta))
        (test,) = rest
        problem = checks.comparison_problem(method.agg, test.op, test.value)
        if problem is not None:
            _fail(problem, test.at if _operator_at_fault(method.agg, test.op) else test.value_at)
        return self._node(EventCond(aggregate, test.op, test.value), _pos(meta))

    @v_args(meta=True)
    def funnel(self, meta: Meta, items: list[Any]) -> Condition:
        steps = tuple(item for item in items if isinstance(item, EventSpec))
        within = (
            _duration(items[-1]) if isinstance(items[-1], Token) and items[-1].type == "DURATION" else None
        )
        return self._node(Funnel(steps, within), _pos(meta))

    def lone_step(self, items: list[Any]) -> NoReturn:
        _, keyword, _ = items
        _fail(
            "a funnel needs two steps or more joined by then; to count events in a window write "
            'event("…").count(within 7d)',
            _pos(keyword),
        )

    def consent(self, items: list[Any]) -> Condition:
        keyword, purpose = items
        return self._node(ConsentCond(_required(purpose, "consent(…) needs a purpose")), _pos(keyword))

    def audience(self, items: list[Any]) -> Condition:
        keyword, name = items
        return self._node(AudienceCond(_required(name, "audience(…) needs an audience id")), _pos(keyword))

    def has_identifier(self, items: list[Any]) -> Condition:
        keyword, name = items
        identifier_type = _string(name)
        problem = checks.identifier_problem(identifier_type)
        if problem is not None:
            _fail(problem, _pos(name))
        return self._node(IdentifierCond(identifier_type), _pos(keyword))

    def aggregate(self, items: list[Any]) -> Aggregate:
        spec, *rest = items
        if not rest:
            return Aggregate(spec)
        (method,) = rest
        return Aggregate(spec, method.agg, method.property, method.window)

    def spec(self, items: list[Any]) -> EventSpec:
        kind, *rest = items
        name = _string(rest.pop(0)) if rest and isinstance(rest[0], Token) else None
        where: tuple[ValueCond, ...] = rest[0] if rest else ()
        spec = EventSpec(kind.value.lower().replace("event", "track"), name, where)
        problem = checks.spec_problem(spec)
        if problem is not None:
            _fail(problem, _pos(kind))
        return spec

    def where(self, items: list[Any]) -> tuple[ValueCond, ...]:
        return tuple(items[1:])

    def where_cond(self, items: list[Any]) -> ValueCond:
        first, *segments, test = items
        head = first.value if first.type == "NAME" else _string(first)
        return _value_cond(".".join([head, *segments]), test)

    def segment(self, items: list[Token]) -> str:
        (token,) = items
        return token.value if token.type == "NAME" else _string(token)

    def aggregation(self, items: list[Any]) -> _Method:
        name, *rest = items
        agg = AGGS.get(name.value.lower())
        if agg is None:
            _fail(f'unknown aggregation "{name.value}"; expected {", ".join(AGGS)}', _pos(name))
        prop = _string(rest.pop(0)) if rest and isinstance(rest[0], Token) else None
        window = rest[0] if rest else Window()
        problem = checks.property_problem(agg, prop)
        if problem is not None:
            _fail(problem, _pos(name))
        return _Method(agg, prop, window, _pos(name))

    def window(self, items: list[Token]) -> Window:
        keyword, *values = items
        word = keyword.type
        if word == "WITHIN":
            return Window(within=_duration(values[0]))
        if word == "SINCE":
            return Window(start=_time(values[0]))
        if word == "BEFORE":
            return Window(end=_time(values[0]))
        start, end = _time(values[0]), _time(values[1])
        if start >= end:
            _fail("between needs its start before its end", _pos(values[1]))
        return Window(start=start, end=end)

    def test(self, items: list[Any]) -> _Test:
        first = items[0]
        kinds = [item.type if isinstance(item, Token) else "VALUE" for item in items]
        at = _pos(first)
        if kinds == ["EXISTS"]:
            return _Test(Op.EXISTS, None, at, at)
        if kinds == ["NOT", "EXISTS"]:
            return _Test(Op.NOT_EXISTS, None, at, at)
        if kinds == ["WITHIN", "LAST", "DURATION"]:
            micros = _duration(items[2])
            if micros % SECOND:
                _fail("within last counts whole seconds", _pos(items[2]))
            return _Test(Op.WITHIN_LAST, micros // SECOND, at, _pos(items[2]))
        if kinds == ["IN", "BAND", "STRING"]:
            return _Test(Op.IN_BAND, _string(items[2]), at, _pos(items[2]))
        value: _Lit = items[-1]
        if kinds[0] == "NOT":
            op = Op.NOT_IN
        elif kinds[0] == "IN":
            op = Op.IN
        else:
            op = OPS[first.value.lower()]
        return _Test(op, value.value, at, value.at)

    @v_args(meta=True)
    def list_value(self, meta: Meta, items: list[_Lit]) -> _Lit:
        return _Lit(tuple(item.value for item in items if not isinstance(item.value, tuple)), _pos(meta))

    def scalar(self, items: list[Token]) -> _Lit:
        (token,) = items
        kind = token.type
        value: Scalar
        if kind == "STRING":
            value = _string(token)
        elif kind == "NUMBER":
            value = _number(token)
        elif kind == "BOOL":
            value = token.value.lower() == "true"
        else:
            value = None
        return _Lit(value, _pos(token))

    item = scalar


_EXAMPLES = (
    {agg: f"{agg.value}(…) > 100" for agg in Agg}
    | {Agg.FIRST: 'first(…) = "FR"'}
    | {Agg.LAST: 'last(…) = "FR"'}
)


def _operator_at_fault(agg: Agg, op: Op) -> bool:
    """Whether no value would do for this aggregation and operator (the error then points at the operator)."""
    if agg is Agg.COUNT:
        return op not in checks.COUNT_OPS
    return op is Op.IN_BAND or (agg in checks.NUMERIC_AGGS and op in checks.TEXT_OPS)


def _required(token: Token, message: str) -> str:
    value = _string(token)
    if not value:
        _fail(message, _pos(token))
    return value


def _value_cond(path: str, test: _Test) -> ValueCond:
    problem = checks.value_problem(test.op, test.value)
    if problem is not None:
        _fail(problem, test.value_at)
    return ValueCond(path, test.op, test.value)


# --- Rendering ----------------------------------------------------------------------------------------------


def render(node: Condition) -> str:
    """The canonical text of a tree (a group of one part is written as that part)."""
    if isinstance(node, And | Or):
        word = " and " if isinstance(node, And) else " or "
        return word.join(_inside(part, node) for part in node.parts)
    if isinstance(node, Not):
        return "not " + _inside(node.part, node)
    if isinstance(node, TraitCond):
        return "traits" + _segments(node.cond.path) + " " + _test(node.cond.op, node.cond.value)
    if isinstance(node, ComputedCond):
        path = _segments(node.cond.path) if node.cond.path else ""
        return f"trait({_quote(node.trait_id)}){path} {_test(node.cond.op, node.cond.value)}"
    if isinstance(node, EventCond):
        if _bare(node):
            return _spec(node.aggregate.events)
        return f"{render_aggregate(node.aggregate)} {_test(node.op, node.value)}"
    if isinstance(node, Funnel):
        within = f" within {_duration_text(node.within)}" if node.within is not None else ""
        return " then ".join(_spec(step) for step in node.steps) + within
    if isinstance(node, ConsentCond):
        return f"consent({_quote(node.purpose)})"
    if isinstance(node, AudienceCond):
        return f"audience({_quote(node.audience_id)})"
    if isinstance(node, IdentifierCond):
        return f"has_identifier({_quote(node.identifier_type)})"
    raise TypeError(f"not a condition: {node!r}")


def render_aggregate(aggregate: Aggregate) -> str:
    """The canonical text of an aggregate: `event("Order Completed").sum("revenue", within 30d)`."""
    args = [_quote(aggregate.property)] if aggregate.property is not None else []
    window = _window(aggregate.window)
    if window:
        args.append(window)
    return f"{_spec(aggregate.events)}.{aggregate.agg.value}({', '.join(args)})"


def _bare(node: EventCond) -> bool:
    """`event("X")` alone: at least once, ever."""
    return (
        node.aggregate == Aggregate(node.aggregate.events)
        and node.op is Op.GE
        and type(node.value) is int
        and node.value == 1
    )


def _inside(part: Condition, parent: Condition) -> str:
    text = render(part)
    needs = isinstance(part, Or) or (isinstance(part, And) and not isinstance(parent, Or))
    one_part = isinstance(part, And | Or) and len(part.parts) == 1
    return f"({text})" if needs and not one_part else text


def _spec(spec: EventSpec) -> str:
    function = "event" if spec.message_type == "track" else spec.message_type
    args = [_quote(spec.name)] if spec.name is not None else []
    if spec.where:
        args.append("where " + " and ".join(_where(cond) for cond in spec.where))
    return f"{function}({', '.join(args)})"


def _where(cond: ValueCond) -> str:
    first, _, rest = cond.path.partition(".")
    head = first if IDENTIFIER.fullmatch(first) else f"[{_quote(first)}]"
    tail = _segments(rest) if "." in cond.path else ""
    return f"{head}{tail} {_test(cond.op, cond.value)}"


def _segments(path: str) -> str:
    return "".join(
        f".{part}" if IDENTIFIER.fullmatch(part) else f"[{_quote(part)}]" for part in path.split(".")
    )


def _test(op: Op, value: Scalar | tuple[Scalar, ...]) -> str:
    if op in (Op.EXISTS, Op.NOT_EXISTS):
        return checks.op_word(op)
    if op is Op.WITHIN_LAST:
        assert isinstance(value, int | float)
        return f"within last {_duration_text(int(value * SECOND))}"
    return f"{checks.op_word(op)} {_value(value)}"


def _value(value: Scalar | tuple[Scalar, ...]) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value)
    return repr(value)


def _quote(text: str | None) -> str:
    return json.dumps(text, ensure_ascii=False)


def _window(window: Window) -> str:
    if window.within is not None:
        return f"within {_duration_text(window.within)}"
    if window.start is not None and window.end is not None:
        return f"between {_time_text(window.start)} and {_time_text(window.end)}"
    if window.start is not None:
        return f"since {_time_text(window.start)}"
    if window.end is not None:
        return f"before {_time_text(window.end)}"
    return ""


def _duration_text(micros: int) -> str:
    unit = next(unit for unit in RENDERED_UNITS if micros % UNITS[unit] == 0)
    return f"{micros // UNITS[unit]}{unit}"


def _time_text(micros: int) -> str:
    moment = EPOCH + timedelta(microseconds=micros)
    if micros % (86_400 * SECOND) == 0:
        return moment.date().isoformat()
    return moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds").replace(
        "+00:00", "Z"
    )


# --- Syntax errors in plain words -------------------------------------------------------------------------

_VALUE = "a value (a string, number, true/false, null or a list)"
_CONDITION = (
    'a condition (traits.…, event("…"), page(…), screen(…), identify(), group(), trait("…"), '
    'consent("…"), audience("…"), has_identifier("…"), not or "(")'
)
_OPERATOR = (
    "an operator (=, !=, <, <=, >, >=, in, not in, contains, starts_with, ends_with, exists, not exists, "
    "within last or in band)"
)
_WINDOW = "a window (within 30d, since 2026-01-01, before 2026-01-01 or between 2026-01-01 and 2026-02-01)"
_GROUPS: tuple[tuple[frozenset[str], str, frozenset[str]], ...] = (
    (frozenset({"STRING", "NUMBER", "BOOL", "NULL", "_LSQB"}), _VALUE, frozenset()),
    (
        frozenset({"STRING", "NUMBER", "BOOL", "NULL"}),
        "a value (a string, number, true/false or null)",
        frozenset(),
    ),
    (
        frozenset({"TRAITS", "TRAIT", "KIND", "CONSENT", "AUDIENCE", "HAS_IDENTIFIER", "NOT", "_LPAR"}),
        _CONDITION,
        frozenset(),
    ),
    (frozenset({"CMP", "IN", "NOT", "WORD_OP", "EXISTS", "WITHIN"}), _OPERATOR, frozenset({"_DOT", "_LSQB"})),
    (frozenset({"WITHIN", "SINCE", "BEFORE", "BETWEEN"}), _WINDOW, frozenset()),
)
_TERMINALS = {
    "_AND": '"and"',
    "_OR": '"or"',
    "NOT": '"not"',
    "IN": '"in"',
    "BAND": '"band"',
    "WORD_OP": "contains, starts_with or ends_with",
    "EXISTS": '"exists"',
    "WITHIN": '"within"',
    "LAST": '"last"',
    "SINCE": '"since"',
    "BEFORE": '"before"',
    "BETWEEN": '"between"',
    "THEN": '"then"',
    "WHERE": '"where"',
    "BOOL": "true or false",
    "NULL": "null",
    "TRAITS": "traits.…",
    "TRAIT": 'trait("…")',
    "KIND": 'event("…"), page(…), screen(…), identify() or group()',
    "CONSENT": 'consent("…")',
    "AUDIENCE": 'audience("…")',
    "HAS_IDENTIFIER": 'has_identifier("…")',
    "CMP": "a comparison (=, !=, <, <=, >, >=)",
    "DURATION": "a duration (such as 30d, 12h, 15m or 45s)",
    "TIME": "a date or timestamp (such as 2026-01-01 or 2026-01-01T09:30:00Z)",
    "NUMBER": "a number",
    "STRING": "a string in double quotes",
    "NAME": "a name",
    "_LPAR": '"("',
    "_RPAR": '")"',
    "_LSQB": '"["',
    "_RSQB": '"]"',
    "_COMMA": '","',
    "_DOT": '"." and an aggregation (such as .count())',
    "$END": "the end of the text",
}
_ORDER = list(_TERMINALS)
_START = {
    "condition": frozenset(
        {"TRAITS", "TRAIT", "KIND", "CONSENT", "AUDIENCE", "HAS_IDENTIFIER", "NOT", "_LPAR"}
    ),
    "aggregate": frozenset({"KIND"}),
}
_SCANNER = re.compile(
    r"""(?P<space>\s+)|(?P<comment>\#[^\n]*)|(?P<string>"(?:[^"\\\n\r]|\\.)*"?)
    |(?P<word>-?\w+(?:[-:.+]\w+)*)|(?P<op>!=|<=|>=|[=<>])|(?P<other>.)""",
    re.VERBOSE,
)


def _expected(names: Iterable[str]) -> list[str]:
    """Readable phrases for lark's expected terminals, groups first."""
    left = {name for name in names if name.isupper()}
    if not left:
        return ["nothing more"]
    phrases: list[str] = []
    for members, phrase, hidden in _GROUPS:
        if members <= left:
            phrases.append(phrase)
            left -= members | hidden
    phrases.extend(_TERMINALS.get(name, name) for name in sorted(left, key=_rank))
    return phrases


def _rank(name: str) -> int:
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def _phrase(names: Iterable[str]) -> str:
    phrases = _expected(names)
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " or " + phrases[-1]


def _scan(text: str) -> list[tuple[int, int]]:
    """The (start, end) offsets of the significant chunks of a text: words, strings, operators, punctuation."""
    return [
        (match.start(), match.end())
        for match in _SCANNER.finditer(text)
        if match.lastgroup not in ("space", "comment")
    ]


def _line_column(text: str, offset: int) -> Pos:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _found(token: Token) -> str:
    kind, value = token.type, str(token.value)
    shown = value if len(value) <= 40 else value[:37] + "…"
    described = {
        "$END": "the end of the text",
        "STRING": f"the string {shown}",
        "NUMBER": f"the number {shown}",
        "DURATION": f"the duration {shown}",
        "TIME": f"the date {shown}",
    }
    return described.get(kind, f'"{shown}"')


def _syntax_error(text: str, error: UnexpectedInput) -> LanguageError:
    chunks = _scan(text)
    names = _acceptable(error)
    if isinstance(error, UnexpectedToken):
        found = _found(error.token)
        offset = chunks[-1][1] if error.token.type == "$END" else error.token.start_pos or 0
        hint = _hint(error.token, names, text, offset)
    else:
        assert isinstance(error, UnexpectedCharacters)
        offset = error.pos_in_stream or 0
        chunk = next(((s, e) for s, e in chunks if s == offset), (offset, offset + 1))
        found = f'"{text[chunk[0] : chunk[1]]}"'
        if text[offset] == '"':
            found, hint = "a string that is not closed", ' (a string ends with " on the same line)'
        else:
            hint = ""
    before = [text[s:e] for s, e in chunks if e <= offset]
    if before.count("(") <= before.count(")") and len(names) > 1:
        names.discard("_RPAR")  # LALR merges states: ")" is offered even when nothing is open
    after = f' after "{before[-1]}"' if before else ""
    line, column = _line_column(text, offset)
    expected = _expected(names)
    message = f"expected {_phrase(names)}{after}, found {found}{hint}"
    return LanguageError(message, line, column, tuple(expected))


def _acceptable(error: UnexpectedInput) -> set[str]:
    """The terminals the parser could take where it stopped: the lexer's own list lacks the end of the text."""
    state = error.state
    try:
        return {name for name in state.parse_conf.states[state.position] if name.isupper()}
    except AttributeError:
        found = error.expected if isinstance(error, UnexpectedToken) else getattr(error, "allowed", set())
        return set(found or ())


def _hint(token: Token, expected: set[str], text: str, offset: int) -> str:
    if token.type == "_OR" and "_AND" in expected and "_OR" not in expected:
        return " (a where clause joins its conditions with and only: join alternatives outside event(…))"
    if token.type == "CMP" and token.value == "=" and text[max(offset - 1, 0)] == "=":
        return ' (compare with a single "=")'
    if token.type == "KIND" and "THEN" in expected:
        return ' (funnel steps are joined by "then")'
    if token.type in _START["condition"] and "_AND" in expected:
        return ' (join conditions with "and" or "or")'
    if token.type == "TIME" and "NUMBER" in expected:
        return ' (to compare with a date, write it as a string: "2026-01-01")'
    return ""
