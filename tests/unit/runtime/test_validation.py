"""The shared-type walk: which fields it checks, the paths it names, and where it stops."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cdp.common.v1 import identity_pb2, message_pb2, paging_pb2, time_pb2
from cdp.errors import InvalidInput
from cdp.identity.v1 import identity_service_pb2 as identity
from cdp.ingest.v1 import ingest_service_pb2 as ingest
from cdp.runtime.validation import validate_request

NOW = Timestamp(seconds=1_800_000_000)


def violations(request: Message, path: str = "") -> list[str]:
    try:
        validate_request(request, path)
    except InvalidInput as error:
        return [v.field for v in error.violations]
    return []


def test_a_valid_request_passes() -> None:
    request = identity.GetMergeHistoryRequest(
        profile=identity_pb2.ProfileRef(profile_id="p-1"),
        time_range=time_pb2.TimeRange(start=NOW, end=NOW),
        page=paging_pb2.PageRequest(page_size=10),
    )
    assert violations(request) == []


def test_every_bad_field_is_named_by_its_path() -> None:
    request = identity.ResolveRequest(
        identifiers=[
            identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_EMAIL, value="a@example.com"),
            identity_pb2.Identifier(value=" "),
        ]
    )
    assert violations(request) == ["identifiers[1].type", "identifiers[1].value"]


def test_a_range_reports_a_bad_bound_once_and_a_reversed_range_at_its_end() -> None:
    bad_start = time_pb2.TimeRange(start=Timestamp(seconds=5, nanos=-1), end=NOW)
    assert violations(identity.GetMergeHistoryRequest(time_range=bad_start)) == ["time_range.start"]
    reversed_range = time_pb2.TimeRange(start=NOW, end=Timestamp(seconds=NOW.seconds - 1))
    assert violations(identity.GetMergeHistoryRequest(time_range=reversed_range)) == ["time_range.end"]


def test_a_profile_reference_needs_a_target() -> None:
    assert violations(identity.GetProfileRequest(profile=identity_pb2.ProfileRef())) == ["profile"]
    empty_id = identity.GetProfileRequest(profile=identity_pb2.ProfileRef(profile_id=" "))
    assert violations(empty_id) == ["profile.profile_id"]


def test_paths_go_under_a_prefix_such_as_a_streamed_messages_index() -> None:
    request = identity.ListProfilesRequest(page=paging_pb2.PageRequest(page_size=-1))
    assert violations(request, "stream[4]") == ["stream[4].page.page_size"]


@pytest.mark.parametrize(
    ("moment", "bad"),
    [
        (Timestamp(seconds=-3_000_000_000), False),  # 1874: ingest's collector judges it, per message
        (Timestamp(seconds=9_000_000_000), False),  # 2255: likewise
        (Timestamp(seconds=0, nanos=-1), True),  # not a Timestamp at all
        (Timestamp(seconds=0, nanos=1_000_000_000), True),
        (Timestamp(seconds=300_000_000_000), True),  # past year 9999
    ],
)
def test_a_collected_messages_times_only_need_to_be_well_formed(moment: Timestamp, bad: bool) -> None:
    message = message_pb2.Message(type=message_pb2.MESSAGE_TYPE_TRACK, event="e", user_id="u")
    message.sent_at.CopyFrom(moment)
    assert violations(ingest.BatchRequest(messages=[message, message])) == (
        ["messages[0].sent_at", "messages[1].sent_at"] if bad else []
    )


def test_a_timestamp_parameter_must_be_between_1970_and_2200() -> None:
    assert violations(identity.GetProfileRequest(as_of=Timestamp(seconds=-1))) == ["as_of"]
    assert violations(identity.GetProfileRequest(as_of=Timestamp(seconds=7_258_118_400))) == ["as_of"]
    assert violations(identity.GetProfileRequest(as_of=NOW)) == []


def test_free_form_json_is_not_walked() -> None:
    message = message_pb2.Message(type=message_pb2.MESSAGE_TYPE_TRACK, event="e", user_id="u")
    message.properties.update({"page": {"page_size": -1}, "deep": [[[{"a": 1}]]]})
    assert violations(ingest.TrackRequest(message=message)) == []
