"""The attribute catalog: which traits the platform knows, their types, and the bands their values fall in.

A band is a labelled half-open range `[lower, upper)`; either end may be open. The bands of an attribute are
contiguous (each band starts where the previous one ends), so a typo such as `25-34` then `36-44` is refused
instead of silently leaving 34.5 unlabelled; values below the first band or above the last get no label.
"""

from __future__ import annotations

import bisect
import enum
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from cdp.errors import FieldViolation, InvalidInput
from services.ingest.domain.messages import format_time, parse_time

ATTRIBUTE_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_ATTRIBUTE_NAME = 255
MAX_BANDS = 100
MAX_LABEL = 64
MAX_DESCRIPTION = 2000
LIST_SEPARATOR = ";"
"""How a CSV cell holds a STRING_LIST: `red;green;blue`."""
_TRUE = frozenset(("true", "t", "yes", "y", "1"))
_FALSE = frozenset(("false", "f", "no", "n", "0"))


class AttributeType(enum.Enum):
    """The value type of an attribute (names match the contract's AttributeType)."""

    STRING = "string"
    NUMBER = "number"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    TIMESTAMP = "timestamp"
    DATE = "date"
    STRING_LIST = "string_list"


NUMERIC = (AttributeType.NUMBER, AttributeType.INTEGER)


class BadValue(ValueError):
    """A raw value that does not fit the attribute's type; the message names the type, never the value."""


@dataclass(frozen=True)
class Band:
    """One labelled range: `lower` inclusive, `upper` exclusive, None = open on that side."""

    label: str
    lower: float | None = None
    upper: float | None = None

    def holds(self, value: float) -> bool:
        """True if the value falls in this band."""
        return (self.lower is None or value >= self.lower) and (self.upper is None or value < self.upper)


@dataclass(frozen=True)
class Attribute:
    """One catalog entry; `version` counts its definitions (0 = never defined)."""

    attribute_id: str
    attribute: str
    type: AttributeType
    description: str = ""
    bands: tuple[Band, ...] = ()
    personal_data: bool = False
    version: int = 0
    updated_at: datetime | None = None

    @property
    def band_key(self) -> str:
        """The trait key the band label is stored under: `ageBand`, or `lifetime_value_band` in snake_case."""
        return f"{self.attribute}_band" if "_" in self.attribute else f"{self.attribute}Band"

    def parse(self, raw: str) -> Any:
        """A CSV cell as a typed JSON value; raises `BadValue` naming the expected type."""
        return _PARSERS[self.type](raw.strip())

    def band(self, value: Any) -> str | None:
        """The label of the band the value falls in, or None (no bands, not numeric, or in no band)."""
        if not self.bands or isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return band_of(self.bands, float(value))

    def to_json(self) -> dict[str, Any]:
        """The bands as stored in `AttributeDefined.bands`."""
        return {"bands": [band_to_json(b) for b in self.bands]}


def band_to_json(band: Band) -> dict[str, Any]:
    """A band as a JSON object (open ends are absent)."""
    body: dict[str, Any] = {"label": band.label}
    if band.lower is not None:
        body["lower_bound"] = band.lower
    if band.upper is not None:
        body["upper_bound"] = band.upper
    return body


def band_from_json(body: dict[str, Any]) -> Band:
    """A band back from its JSON object."""
    return Band(body["label"], body.get("lower_bound"), body.get("upper_bound"))


def band_of(bands: Sequence[Band], value: float) -> str | None:
    """The label of the band holding `value`; bands are validated, hence sorted and contiguous."""
    if math.isnan(value):
        return None
    starts = [-math.inf if b.lower is None else b.lower for b in bands]
    index = bisect.bisect_right(starts, value) - 1
    if index < 0 or not bands[index].holds(value):
        return None
    return bands[index].label


def validate_attribute(attribute: Attribute) -> None:
    """Raise `InvalidInput` naming every bad field of a definition, bands included."""
    problems = list(_attribute_problems(attribute))
    if problems:
        raise InvalidInput(problems)


def _attribute_problems(attribute: Attribute) -> Iterator[FieldViolation]:
    if not ATTRIBUTE_ID.match(attribute.attribute_id):
        yield FieldViolation("attribute.attribute_id", "is required: lower_snake_case, at most 64 characters")
    name = attribute.attribute
    if not name.strip() or len(name) > MAX_ATTRIBUTE_NAME or "." in name or name != name.strip():
        yield FieldViolation(
            "attribute.attribute",
            f"is required: a trait key without dots, at most {MAX_ATTRIBUTE_NAME} characters",
        )
    if len(attribute.description) > MAX_DESCRIPTION:
        yield FieldViolation("attribute.description", f"is longer than {MAX_DESCRIPTION} characters")
    if attribute.bands and attribute.type not in NUMERIC:
        yield FieldViolation("attribute.bands", "banding rules apply to NUMBER and INTEGER attributes only")
    yield from band_problems(attribute.bands)


def band_problems(bands: Sequence[Band], path: str = "attribute.bands") -> Iterator[FieldViolation]:
    """Bad bounds, duplicate labels, and bands out of order, overlapping or leaving a gap."""
    if len(bands) > MAX_BANDS:
        yield FieldViolation(path, f"at most {MAX_BANDS} bands")
        return
    labels: dict[str, int] = {}
    for index, band in enumerate(bands):
        where = f"{path}[{index}]"
        if not band.label.strip() or len(band.label) > MAX_LABEL:
            yield FieldViolation(f"{where}.label", f"is required, at most {MAX_LABEL} characters")
        elif band.label in labels:
            yield FieldViolation(f"{where}.label", f"repeats the label of {path}[{labels[band.label]}]")
        labels.setdefault(band.label, index)
        for end in ("lower", "upper"):
            bound = getattr(band, end)
            if bound is not None and not math.isfinite(bound):
                yield FieldViolation(
                    f"{where}.{end}_bound", "must be a finite number (leave it unset for an open end)"
                )
        if band.lower is not None and band.upper is not None and band.lower >= band.upper:
            yield FieldViolation(where, "lower_bound must be below upper_bound")
        if index == 0:
            continue
        yield from _neighbour_problems(bands[index - 1], band, f"{path}[{index - 1}]", where)


def _neighbour_problems(
    previous: Band, band: Band, previous_path: str, where: str
) -> Iterator[FieldViolation]:
    """Bands are listed in ascending order, each starting exactly where the previous one ends."""
    if previous.upper is None:
        yield FieldViolation(where, f"follows {previous_path}, which is open above (overlap)")
    elif band.lower is None:
        yield FieldViolation(where, f"is open below but follows {previous_path} (overlap)")
    elif band.lower < previous.upper:
        yield FieldViolation(
            where, f"overlaps {previous_path} (starts at {band.lower:g}, before {previous.upper:g})"
        )
    elif band.lower > previous.upper:
        yield FieldViolation(
            where, f"leaves a gap after {previous_path} ({previous.upper:g} to {band.lower:g})"
        )


def _string(raw: str) -> str:
    return raw


def _number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise BadValue("is not a number") from None
    if not math.isfinite(value):
        raise BadValue("is not a finite number")
    return value


def _integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        pass
    value = _number(raw)  # "27.0" is an integer written as a float, as spreadsheets export it
    if not value.is_integer():
        raise BadValue("is not an integer")
    return int(value)


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise BadValue("is not a boolean (true/false, yes/no, 1/0)")


def _timestamp(raw: str) -> str:
    try:
        return format_time(parse_time(raw))
    except ValueError:
        raise BadValue("is not an RFC 3339 timestamp") from None


def _date(raw: str) -> str:
    try:
        return date.fromisoformat(raw).isoformat()
    except ValueError:
        raise BadValue("is not a date (YYYY-MM-DD)") from None


def _string_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(LIST_SEPARATOR) if item.strip()]


_PARSERS = {
    AttributeType.STRING: _string,
    AttributeType.NUMBER: _number,
    AttributeType.INTEGER: _integer,
    AttributeType.BOOLEAN: _boolean,
    AttributeType.TIMESTAMP: _timestamp,
    AttributeType.DATE: _date,
    AttributeType.STRING_LIST: _string_list,
}
