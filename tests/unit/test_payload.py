"""The limits stored JSON must meet (`cdp.payload`): what is refused at the door and repaired on a read."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from cdp.payload import MAX_DEPTH, MAX_INTEGER, MIN_INTEGER, problems, repaired


def nested(levels: int) -> Any:
    """An object `levels` deep: `nested(1)` is `{"a": 1}`."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def test_a_value_at_the_depth_limit_passes_and_one_level_more_is_named() -> None:
    assert list(problems(nested(MAX_DEPTH), "traits")) == []
    [(where, why)] = problems(nested(MAX_DEPTH + 1), "traits")
    assert where == "traits" + ".a" * MAX_DEPTH and str(MAX_DEPTH) in why


def test_arrays_count_as_levels() -> None:
    value: Any = 1
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    [(where, _)] = problems(value, "p")
    assert where == "p" + "[0]" * MAX_DEPTH


def test_numbers_outside_what_a_double_or_64_bits_hold_are_named() -> None:
    found = dict(
        problems(
            {
                "big": json.loads("1e400"),
                "nan": math.nan,
                "wide": MAX_INTEGER + 1,
                "low": MIN_INTEGER - 1,
                "ok": [MAX_INTEGER, MIN_INTEGER, 1.5e308, -0.0],
            },
            "properties",
        )
    )
    assert set(found) == {"properties.big", "properties.nan", "properties.wide", "properties.low"}
    assert "finite" in found["properties.big"] and "64 bits" in found["properties.wide"]


def test_text_with_nul_or_a_lone_surrogate_is_named_in_values_and_keys() -> None:
    found = dict(
        problems({"nul": "a\x00b", "lone": "x\ud800", "k\udc00ey": 1, "fine": "héllo ✓ 𝄞"}, "context")
    )
    assert "NUL" in found["context.nul"] and "surrogate" in found["context.lone"]
    assert "key" in found["context"]
    assert len(found) == 3


def test_a_value_that_passes_is_unchanged_by_repair() -> None:
    value = {"a": [1, 2.5, "x", None, True, {"b": nested(5)}]}
    assert list(problems(value, "")) == []
    assert repaired(value) == (value, [])


def test_repair_names_each_replaced_path() -> None:
    clean, paths = repaired(
        {"deep": nested(MAX_DEPTH + 3), "inf": math.inf, "text": "a\x00", 7: "key"}, "traits"
    )
    # the root object is level 1, so the object under "deep" that is one level too many sits MAX_DEPTH - 1 below
    assert paths == ["traits.deep" + ".a" * (MAX_DEPTH - 1), "traits.inf", "traits.text", "traits.7"]
    assert clean["inf"] is None and clean["text"] == "a\ufffd" and clean["7"] == "key"


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=3)
    ),
    max_leaves=30,
)


def deepen(value: Any, levels: int) -> Any:
    for _ in range(levels):
        value = {"x": value}
    return value


@given(value=json_like, levels=st.integers(min_value=0, max_value=40))
def test_whatever_is_repaired_passes_the_limits_and_converts_everywhere(value: Any, levels: int) -> None:
    clean, paths = repaired(deepen(value, levels), "v")
    assert list(problems(clean, "v")) == []
    orjson.dumps(clean)  # JSON again
    json_format.ParseDict({"v": clean}, struct_pb2.Struct())  # a protobuf Struct
    if not paths:
        assert list(problems(deepen(value, levels), "v")) == []
