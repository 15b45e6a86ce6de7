"""Condition trees and aggregates ↔ plain JSON, as `AudienceDefined.definition` and computed-trait events keep
them.

Each node is an object tagged by `kind`; fields at their default are left out (a window of all time, a spec
without a name or where clause, a value condition's band). The decoder accepts what is left out and refuses
what it does not know (an unknown key, kind, operator or aggregation), so an older reader never misreads a
newer definition: a change adds an optional key or a kind, and the event catalog upcasts the rest.

    {"kind": "and", "parts": [
        {"kind": "trait", "path": "plan", "op": "=", "value": "pro"},
        {"kind": "event", "op": ">=", "value": 2, "aggregate": {
            "events": {"message_type": "track", "name": "Order Completed"},
            "agg": "count", "window": {"within": 2592000000000}}}]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from services.segments.domain.conditions import (
    MAX_DEPTH,
    Agg,
    Aggregate,
    And,
    AudienceCond,
    Band,
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
from services.segments.domain.errors import DefinitionError

Json = dict[str, Any]


# --- Encoding -----------------------------------------------------------------------------------------------


def condition_to_json(node: Condition) -> Json:
    """A tree as plain JSON."""
    if isinstance(node, And | Or):
        return {
            "kind": "and" if isinstance(node, And) else "or",
            "parts": [condition_to_json(p) for p in node.parts],
        }
    if isinstance(node, Not):
        return {"kind": "not", "part": condition_to_json(node.part)}
    if isinstance(node, TraitCond):
        return {"kind": "trait", **_value_cond(node.cond)}
    if isinstance(node, ComputedCond):
        return {"kind": "computed", "trait_id": node.trait_id, **_value_cond(node.cond)}
    if isinstance(node, EventCond):
        comparison = {"op": node.op.value, "value": _value(node.value)}
        return {"kind": "event", "aggregate": aggregate_to_json(node.aggregate), **comparison}
    if isinstance(node, Funnel):
        found: Json = {"kind": "funnel", "steps": [_spec(step) for step in node.steps]}
        return found | ({"within": node.within} if node.within is not None else {})
    if isinstance(node, ConsentCond):
        return {"kind": "consent", "purpose": node.purpose}
    if isinstance(node, AudienceCond):
        return {"kind": "audience", "audience_id": node.audience_id}
    if isinstance(node, IdentifierCond):
        return {"kind": "identifier", "identifier_type": node.identifier_type}
    raise TypeError(f"not a condition: {node!r}")


def aggregate_to_json(aggregate: Aggregate) -> Json:
    """An aggregate as plain JSON."""
    found: Json = {"events": _spec(aggregate.events), "agg": aggregate.agg.value}
    if aggregate.property is not None:
        found["property"] = aggregate.property
    window = {name: getattr(aggregate.window, name) for name in ("within", "start", "end")}
    window = {name: value for name, value in window.items() if value is not None}
    return found | ({"window": window} if window else {})


def _spec(spec: EventSpec) -> Json:
    found: Json = {"message_type": spec.message_type}
    if spec.name is not None:
        found["name"] = spec.name
    if spec.where:
        found["where"] = [_value_cond(cond) for cond in spec.where]
    return found


def _value_cond(cond: ValueCond) -> Json:
    found: Json = {"path": cond.path, "op": cond.op.value, "value": _value(cond.value)}
    if cond.band is not None:
        band = cond.band
        found["band"] = {
            "attribute": band.attribute,
            "label": band.label,
            "lower": band.lower,
            "upper": band.upper,
        }
    return found


def _value(value: Scalar | tuple[Scalar, ...]) -> Any:
    return list(value) if isinstance(value, tuple) else value


# --- Decoding -----------------------------------------------------------------------------------------------


def condition_from_json(data: Any) -> Condition:
    """A tree from its JSON; DefinitionError names the first malformed part."""
    return _condition(data, "condition", 1)


def aggregate_from_json(data: Any) -> Aggregate:
    """An aggregate from its JSON; DefinitionError names the first malformed part."""
    return _aggregate(data, "aggregate")


def _bad(at: str, problem: str) -> DefinitionError:
    return DefinitionError(f"{at}: {problem}")


def _object(
    data: Any, at: str, required: AbstractSet[str], optional: AbstractSet[str] = frozenset()
) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _bad(at, "is not an object")
    missing = sorted(required - data.keys())
    if missing:
        raise _bad(at, f"lacks {', '.join(missing)}")
    unknown = sorted(str(key) for key in data.keys() - required - optional)
    if unknown:
        raise _bad(at, f"has unknown fields {', '.join(unknown)}")
    return data


def _text(data: Mapping[str, Any], key: str, at: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise _bad(f"{at}.{key}", "is not a string")
    return value


def _micros(data: Mapping[str, Any], key: str, at: str) -> int | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise _bad(f"{at}.{key}", "is not an integer (µs)")
    return value


_FIELDS = {
    "and": {"parts"},
    "or": {"parts"},
    "not": {"part"},
    "trait": {"path", "op", "value"},
    "computed": {"trait_id", "path", "op", "value"},
    "event": {"aggregate", "op", "value"},
    "funnel": {"steps"},
    "consent": {"purpose"},
    "audience": {"audience_id"},
    "identifier": {"identifier_type"},
}
_OPTIONAL = {"trait": {"band"}, "computed": {"band"}, "funnel": {"within"}}


def _condition(data: Any, at: str, level: int) -> Condition:
    if level > MAX_DEPTH:
        raise _bad(at, f"nests deeper than {MAX_DEPTH} levels")
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise _bad(at, f"unknown kind {kind!r}" if kind is not None else "is not a condition (no kind)")
    data = _object(data, at, _FIELDS[kind] | {"kind"}, _OPTIONAL.get(kind, set()))
    if kind in ("and", "or"):
        parts = data["parts"]
        if not isinstance(parts, list):
            raise _bad(f"{at}.parts", "is not a list")
        built = tuple(_condition(part, f"{at}.parts[{i}]", level + 1) for i, part in enumerate(parts))
        return And(built) if kind == "and" else Or(built)
    if kind == "not":
        return Not(_condition(data["part"], f"{at}.part", level + 1))
    return _leaf(kind, data, at)


def _leaf(kind: str, data: Mapping[str, Any], at: str) -> Condition:
    if kind == "trait":
        return TraitCond(_value_cond_of(data, at))
    if kind == "computed":
        return ComputedCond(_text(data, "trait_id", at), _value_cond_of(data, at))
    if kind == "event":
        aggregate = _aggregate(data["aggregate"], f"{at}.aggregate")
        return EventCond(aggregate, _op(data, at), _scalar_or_list(data["value"], f"{at}.value"))
    if kind == "funnel":
        steps = data["steps"]
        if not isinstance(steps, list):
            raise _bad(f"{at}.steps", "is not a list")
        specs = tuple(_spec_of(step, f"{at}.steps[{i}]") for i, step in enumerate(steps))
        return Funnel(specs, _micros(data, "within", at))
    if kind == "consent":
        return ConsentCond(_text(data, "purpose", at))
    if kind == "audience":
        return AudienceCond(_text(data, "audience_id", at))
    return IdentifierCond(_text(data, "identifier_type", at))


def _aggregate(data: Any, at: str) -> Aggregate:
    data = _object(data, at, {"events", "agg"}, {"property", "window"})
    try:
        agg = Agg(data["agg"])
    except ValueError:
        raise _bad(f"{at}.agg", f"unknown aggregation {data['agg']!r}") from None
    prop = data.get("property")
    if prop is not None and not isinstance(prop, str):
        raise _bad(f"{at}.property", "is not a string")
    window = _object(data.get("window", {}), f"{at}.window", set(), {"within", "start", "end"})
    where = f"{at}.window"
    bounds = (
        _micros(window, "within", where),
        _micros(window, "start", where),
        _micros(window, "end", where),
    )
    return Aggregate(_spec_of(data["events"], f"{at}.events"), agg, prop, Window(*bounds))


def _spec_of(data: Any, at: str) -> EventSpec:
    data = _object(data, at, {"message_type"}, {"name", "where"})
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad(f"{at}.name", "is not a string")
    where = data.get("where", [])
    if not isinstance(where, list):
        raise _bad(f"{at}.where", "is not a list")
    conds = tuple(_where_cond(cond, f"{at}.where[{i}]") for i, cond in enumerate(where))
    return EventSpec(_text(data, "message_type", at), name, conds)


def _where_cond(data: Any, at: str) -> ValueCond:
    return _value_cond_of(_object(data, at, {"path", "op", "value"}, {"band"}), at)


def _value_cond_of(data: Mapping[str, Any], at: str) -> ValueCond:
    band = data.get("band")
    return ValueCond(
        _text(data, "path", at),
        _op(data, at),
        _scalar_or_list(data["value"], f"{at}.value"),
        _band(band, f"{at}.band") if band is not None else None,
    )


def _op(data: Mapping[str, Any], at: str) -> Op:
    try:
        return Op(data["op"])
    except ValueError:
        raise _bad(f"{at}.op", f"unknown operator {data['op']!r}") from None


def _band(data: Any, at: str) -> Band:
    data = _object(data, at, {"attribute", "label", "lower", "upper"})
    bounds = []
    for key in ("lower", "upper"):
        value = data[key]
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise _bad(f"{at}.{key}", "is not a number")
        bounds.append(value)
    return Band(_text(data, "attribute", at), _text(data, "label", at), bounds[0], bounds[1])


def _scalar_or_list(value: Any, at: str) -> Scalar | tuple[Scalar, ...]:
    if isinstance(value, list):
        return tuple(_scalar(item, f"{at}[{i}]") for i, item in enumerate(value))
    return _scalar(value, at)


def _scalar(value: Any, at: str) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(at, "is not a finite number")
    if value is None or isinstance(value, str | int | float):
        return value
    raise _bad(at, "is not a string, number, boolean or null")
