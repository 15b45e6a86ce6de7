from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp.errors import InvalidInput
from services.ingest.domain.messages import MAX_MESSAGE_BYTES, InvalidMessage, parse_message, settle_timestamp
from services.ingest.domain.outcomes import Reason

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def violations(raw: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(InvalidInput) as raised:
        parse_message(raw, received_at=NOW, **kwargs)
    return [violation.field for violation in raised.value.violations]


def test_a_track_message_is_accepted_with_its_fields() -> None:
    message = parse_message(
        {
            "type": "track",
            "messageId": "m-1",
            "userId": 42,
            "event": "Order Completed",
            "properties": {"revenue": 12.5},
            "context": {"ip": "203.0.113.9"},
            "writeKey": "secret",
            "channel": "server",
        },
        received_at=NOW,
    )
    assert (message.type, message.user_id, message.event) == ("track", "42", "Order Completed")
    assert message.properties == {"revenue": 12.5}
    assert message.timestamp == NOW, "no timestamp: the server's receivedAt"
    assert message.subject_identifier == ("user_id", "42")
    assert message.extra == {"channel": "server"}, "the write key is never stored"
    assert "writeKey" not in message.to_json()


def test_the_subject_is_the_user_id_else_the_anonymous_id() -> None:
    anonymous = parse_message({"type": "page", "anonymousId": "a-1"}, received_at=NOW, message_id="x")
    assert anonymous.subject_identifier == ("anonymous_id", "a-1")
    both = parse_message(
        {"type": "page", "anonymousId": "a-1", "userId": "u"}, received_at=NOW, message_id="x"
    )
    assert both.subject_identifier == ("user_id", "u")


def test_clock_skew_is_corrected_from_sent_at() -> None:
    device_now = NOW + timedelta(hours=3)  # the device clock runs three hours fast
    message = parse_message(
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "timestamp": (device_now - timedelta(seconds=10)).isoformat(),
            "sentAt": device_now.isoformat(),
        },
        received_at=NOW,
        message_id="m",
    )
    assert message.timestamp == NOW - timedelta(seconds=10)
    assert message.original_timestamp == device_now - timedelta(seconds=10)
    assert settle_timestamp(None, None, NOW) == NOW


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"type": "track", "event": "E"}, ["userId"]),
        ({"type": "track", "userId": "u"}, ["event"]),
        ({"type": "track", "userId": "", "anonymousId": "  ", "event": "E"}, ["userId"]),
        ({"type": "alias", "userId": "u"}, ["previousId"]),
        ({"type": "alias", "previousId": "p"}, ["userId"]),
        ({"type": "group", "userId": "u"}, ["groupId"]),
        ({"type": "bogus", "userId": "u"}, ["type"]),
        ({"type": "track", "userId": "u", "event": "E", "properties": []}, ["properties"]),
        ({"type": "track", "userId": {"a": 1}, "event": "E"}, ["userId"]),
        ({"type": "track", "userId": "u", "event": "E", "timestamp": "yesterday"}, ["timestamp"]),
        ({"type": "track", "userId": "u", "event": "E", "timestamp": "1970-01-02T00:00:00Z"}, ["timestamp"]),
        ({"type": "track", "userId": "u", "event": "E", "timestamp": "2030-01-01T00:00:00Z"}, ["timestamp"]),
        ({"type": "track", "userId": "u", "event": "E", "messageId": "x" * 101}, ["messageId"]),
        ({"type": "identify", "userId": "u"}, ["messageId"]),
    ],
)
def test_invalid_messages_name_the_field(raw: dict[str, Any], expected: list[str]) -> None:
    message_id = None if raw.get("type") == "identify" else "generated"
    assert violations(raw, message_id=message_id) == expected


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    raw = {"type": "track", "properties": "x", "sentAt": 5}
    assert violations(raw, message_id="m", path="batch[3]") == [
        "batch[3].userId",
        "batch[3].event",
        "batch[3].properties",
        "batch[3].sentAt",
    ]


def test_the_endpoint_type_must_agree_with_the_message() -> None:
    assert violations({"type": "page", "userId": "u"}, default_type="track", message_id="m") == ["type"]
    message = parse_message(
        {"userId": "u", "event": "E"}, received_at=NOW, default_type="track", message_id="m"
    )
    assert message.type == "track"


def test_a_message_over_32_kb_is_refused() -> None:
    raw = {"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x" * MAX_MESSAGE_BYTES}}
    assert violations(raw, message_id="m") == ["message"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "userId",
                "anonymousId",
                "event",
                "messageId",
                "properties",
                "traits",
                "timestamp",
                "sentAt",
            ]
        ),
        json_values,
    )
)
def test_arbitrary_json_is_either_a_message_or_a_clear_error(raw: dict[str, Any]) -> None:
    try:
        message = parse_message(raw, received_at=NOW, message_id="fallback")
    except InvalidInput as error:
        assert error.violations and all(v.field and v.description for v in error.violations)
    else:
        assert message.user_id or message.anonymous_id
        assert message.type in ("identify", "track", "page", "screen", "group", "alias")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"type": "track", "userId": "u"}, Reason.MISSING_FIELD),
        ({"type": "track", "userId": "u", "event": 5}, Reason.INVALID_FIELD),
        (
            {"type": "track", "userId": "u", "event": "E", "timestamp": "2099-01-01T00:00:00Z"},
            Reason.TIMESTAMP_OUT_OF_RANGE,
        ),
        (
            {"type": "track", "userId": "u", "event": "E", "properties": {"x": "y" * 40_000}},
            Reason.MESSAGE_TOO_LARGE,
        ),
    ],
)
def test_a_rejection_is_classified_for_the_sender(raw: dict[str, Any], reason: Reason) -> None:
    with pytest.raises(InvalidMessage) as raised:
        parse_message(raw, received_at=NOW, message_id="m")
    assert raised.value.rejection is reason
    assert raised.value.reason == f"REJECTION_REASON_{reason.name}"


TRACK = {"type": "track", "userId": "u", "event": "E"}


@pytest.mark.parametrize(
    ("times", "field"),
    [
        ({"timestamp": "0001-01-01T00:00:00+05:00"}, "timestamp"),
        ({"timestamp": "9999-12-31T23:59:59-05:00"}, "timestamp"),
        ({"timestamp": "9999-12-31T23:59:59Z", "sentAt": "0001-01-01T00:00:00Z"}, "sentAt"),
        ({"timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}, "sentAt"),
        ({"originalTimestamp": "0001-01-01T00:00:01Z", "sentAt": "9999-12-31T00:00:00Z"}, "sentAt"),
    ],
)
def test_extreme_timestamps_are_out_of_range_never_a_crash(times: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidMessage) as raised:
        parse_message({**TRACK, **times}, received_at=NOW, message_id="m")
    assert raised.value.rejection is Reason.TIMESTAMP_OUT_OF_RANGE
    assert [v.field for v in raised.value.violations] == [field]


instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.sampled_from([UTC])
).map(lambda moment: moment.isoformat())
offsets = st.sampled_from(["Z", "+14:00", "-12:00", "+05:30", ""])


@given(timestamp=instants, sent_at=instants | st.none(), offset=offsets)
def test_any_timestamp_and_sent_at_pair_settles_or_is_refused_as_out_of_range(
    timestamp: str, sent_at: str | None, offset: str
) -> None:
    raw = {**TRACK, "timestamp": timestamp.replace("+00:00", "") + offset}
    if sent_at is not None:
        raw["sentAt"] = sent_at
    try:
        message = parse_message(raw, received_at=NOW, message_id="m")
    except InvalidMessage as error:
        assert error.rejection is Reason.TIMESTAMP_OUT_OF_RANGE
    else:
        assert datetime(1990, 1, 1, tzinfo=UTC) <= message.timestamp <= NOW + timedelta(days=1)


def test_stored_json_that_later_steps_cannot_hold_is_refused_naming_the_field() -> None:
    deep: Any = "leaf"
    for _ in range(60):
        deep = {"a": deep}
    raw = {
        **TRACK,
        "properties": {"big": float("inf"), "ok": 1},
        "traits": deep,
        "context": {"note": "nul\x00"},
        "channel": "\ud800",  # an extra top-level field SDKs add, stored too
    }
    found = violations(raw, message_id="m")
    assert found[0] == "properties.big"
    assert found[1].startswith("traits.a.a") and "context.note" in found and "channel" in found
