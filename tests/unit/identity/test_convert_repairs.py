"""A read converts whatever a read-model row holds: what no Struct can hold is replaced and named, never raised."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format

from services.identity import convert
from services.identity.convert import struct


def test_values_a_struct_cannot_hold_are_replaced_and_their_paths_named() -> None:
    deep: Any = 1
    for _ in range(150):  # far past protobuf's own limit of 100, where ParseDict raises
        deep = {"a": deep}
    repaired: list[str] = []
    converted = struct(
        {"deep": deep, "nan": math.nan, "text": "x\ud800", "ok": [1, "two"]}, "traits", repaired
    )
    document = json_format.MessageToDict(converted)
    assert document["nan"] is None and document["text"] == "x\ufffd" and document["ok"] == [1, "two"]
    assert repaired[1:] == ["traits.nan", "traits.text"] and repaired[0].startswith("traits.deep.a.a")


def test_a_clean_value_names_nothing() -> None:
    repaired: list[str] = []
    struct({"plan": "pro", "n": 3}, "traits", repaired)
    assert repaired == []


def test_count_maps_keep_what_a_protobuf_map_can_hold() -> None:
    stats = convert._stats({"event_counts": {"Order\ud800": 2, "huge": 2**70, "text": "x", "ok": 1}})
    assert dict(stats.event_counts) == {"Order?": 2, "ok": 1}
    assert dict(convert._stats({"sources": "not a map"}).sources) == {}
