"""The attribute catalog: banding rules (validation and application) and typed parsing of raw values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp.errors import InvalidInput
from services.ingest.domain.catalog import (
    Attribute,
    AttributeType,
    BadValue,
    Band,
    band_of,
    validate_attribute,
)

AGE_BANDS = (
    Band("<18", None, 18),
    Band("18-24", 18, 25),
    Band("25-34", 25, 35),
    Band("35-54", 35, 55),
    Band("55+", 55, None),
)
SPEND_BANDS = (Band("0-99", 0, 100), Band("100-249", 100, 250), Band("250-999", 250, 1000))


def attribute(type: AttributeType = AttributeType.INTEGER, bands: tuple[Band, ...] = AGE_BANDS) -> Attribute:
    return Attribute("age", "age", type, bands=bands)


def fields_of(candidate: Attribute) -> list[str]:
    with pytest.raises(InvalidInput) as raised:
        validate_attribute(candidate)
    return [f"{v.field}: {v.description}" for v in raised.value.violations]


def test_values_fall_in_their_band() -> None:
    age = attribute()
    validate_attribute(age)
    assert age.band(27) == "25-34"
    assert age.band(17) == "<18" and age.band(18) == "18-24" and age.band(90) == "55+"
    spend = Attribute("spend", "lifetime_spend", AttributeType.NUMBER, bands=SPEND_BANDS)
    assert spend.band(130.0) == "100-249"
    assert spend.band(-1) is None and spend.band(1000) is None, "outside the closed ends: no label"
    assert spend.band(True) is None and spend.band("130") is None


def test_band_keys_follow_the_trait_key_style() -> None:
    assert attribute().band_key == "ageBand"
    assert Attribute("ltv", "lifetime_value", AttributeType.NUMBER).band_key == "lifetime_value_band"


def test_overlaps_gaps_and_bad_bounds_are_refused_naming_the_rule() -> None:
    problems = fields_of(
        attribute(
            bands=(
                Band("a", 0, 10),
                Band("b", 5, 20),
                Band("c", 25, 30),
                Band("d", 40, 35),
                Band("a", 35, 50),
            )
        )
    )
    joined = "\n".join(problems)
    assert "attribute.bands[1]: overlaps attribute.bands[0]" in joined
    assert "attribute.bands[2]: leaves a gap after attribute.bands[1]" in joined
    assert "attribute.bands[3]: lower_bound must be below upper_bound" in joined
    assert "attribute.bands[4].label: repeats the label of attribute.bands[0]" in joined


def test_open_ends_only_at_the_ends_and_bands_only_on_numbers() -> None:
    assert any("open above" in p for p in fields_of(attribute(bands=(Band("x", 0, None), Band("y", 10, 20)))))
    assert any("open below" in p for p in fields_of(attribute(bands=(Band("x", 0, 10), Band("y", None, 20)))))
    assert any("attribute.bands:" in p for p in fields_of(attribute(AttributeType.STRING)))
    assert any(
        "attribute.attribute_id" in p for p in fields_of(Attribute("Age!", "age", AttributeType.INTEGER))
    )


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_the_bisected_band_is_the_band_that_holds_the_value(value: float) -> None:
    expected = next((b.label for b in AGE_BANDS if b.holds(value)), None)
    assert band_of(AGE_BANDS, value) == expected


@pytest.mark.parametrize(
    ("type", "raw", "value"),
    [
        (AttributeType.INTEGER, " 27 ", 27),
        (AttributeType.INTEGER, "27.0", 27),
        (AttributeType.NUMBER, "130.5", 130.5),
        (AttributeType.BOOLEAN, "Yes", True),
        (AttributeType.BOOLEAN, "0", False),
        (AttributeType.DATE, "1990-02-03", "1990-02-03"),
        (AttributeType.TIMESTAMP, "2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00.000Z"),
        (AttributeType.STRING_LIST, "red; green;;blue", ["red", "green", "blue"]),
        (AttributeType.STRING, "as is", "as is"),
    ],
)
def test_raw_values_parse_to_their_type(type: AttributeType, raw: str, value: object) -> None:
    assert Attribute("x", "x", type).parse(raw) == value


@pytest.mark.parametrize(
    ("type", "raw"),
    [
        (AttributeType.INTEGER, "27.5"),
        (AttributeType.NUMBER, "nan"),
        (AttributeType.NUMBER, "12abc"),
        (AttributeType.BOOLEAN, "maybe"),
        (AttributeType.DATE, "03/02/1990"),
        (AttributeType.TIMESTAMP, "yesterday"),
    ],
)
def test_bad_values_name_the_type_not_the_value(type: AttributeType, raw: str) -> None:
    with pytest.raises(BadValue) as raised:
        Attribute("x", "x", type).parse(raw)
    assert raw not in str(raised.value)
