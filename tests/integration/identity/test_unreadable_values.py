"""No value in the log can break identity: it is repaired where it is recorded, and reads never fail.

The messages are appended straight to the log, as values accepted before ingest's limits existed would be. The
resolver replaces what its read model cannot hold when it records the message (PostgreSQL's json refuses NUL and
Infinity; without this the message was parked), so the profile keeps the rest; a read that meets a value no Struct
can hold (a row written before) replaces it and names it in `repaired_fields` (`convert.struct`, unit-tested).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from cdp.common.v1 import identity_pb2
from cdp.eventlog import EventFilter, NewEvent
from cdp.identity.v1 import identity_service_pb2 as pb
from cdp.payload import MAX_DEPTH
from tests.integration.identity.conftest import ADMIN, Harness, running_harness, settings_for

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


def user_ref(user_id: str) -> identity_pb2.ProfileRef:
    return identity_pb2.ProfileRef(
        identifier=identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_USER_ID, value=user_id)
    )


async def listed(h: Harness, page_size: int, *, limit: int | None = None) -> list[str]:
    """Every profile id, page by page; each page within `limit` bytes when given."""
    seen: list[str] = []
    token = ""
    while True:
        page = await h.stub.ListProfiles(
            pb.ListProfilesRequest(page={"page_size": page_size, "page_token": token}), metadata=ADMIN
        )
        assert limit is None or page.ByteSize() <= limit
        seen += [p.profile_id for p in page.profiles]
        token = page.page.next_page_token
        if not token:
            return seen


def _depth(value: Any) -> int:
    return 1 + _depth(value["a"]) if isinstance(value, dict) and value.get("a") is not None else 0


async def test_a_profile_holding_values_no_struct_can_hold_is_repaired_flagged_and_listed(
    harness: Harness,
) -> None:
    h = harness
    for n in range(3):
        await h.collect("identify", at=T0 + timedelta(minutes=n), userId=f"ok-{n}", traits={"n": n})
    poison = {"deep": nested(120), "inf": math.inf, "text": "nul\x00", "wide": 2**70, "plan": "pro"}
    await h.collect("identify", at=T0 + timedelta(minutes=9), userId="poison", traits=poison)
    await h.settle()

    ref = user_ref("poison")
    reply = await h.stub.GetProfile(pb.GetProfileRequest(profile=ref), metadata=ADMIN)
    traits = json_format.MessageToDict(reply.profile.traits)
    assert traits["plan"] == "pro" and traits["inf"] is None and traits["text"] == "nul\ufffd"
    assert traits["wide"] is None and _depth(traits["deep"]) == MAX_DEPTH - 2  # `traits.deep` is level 2

    for page_size in (1, 0):
        seen = await listed(h, page_size)
        assert len(seen) == 4 and reply.profile.profile_id in seen


async def test_an_undecodable_message_in_the_log_is_parked_and_never_fails_a_read_of_the_past(
    harness: Harness,
) -> None:
    h = harness
    await h.collect("identify", at=T0, userId="steady", traits={"plan": "pro"})
    # A body no code can read (written by a bug, or bytes damaged on disk), between two good messages.
    await h.store.append("message-garbled", [NewEvent(type="MessageCollected", data=b"{not json")])
    await h.collect("identify", at=T0 + timedelta(minutes=1), userId="steady", traits={"seats": 3})
    await h.settle()

    ref = user_ref("steady")
    now = await h.stub.GetProfile(pb.GetProfileRequest(profile=ref), metadata=ADMIN)
    past = pb.GetProfileRequest(profile=ref)
    past.as_of.FromDatetime(datetime.now(UTC))
    then = await h.stub.GetProfile(past, metadata=ADMIN)
    for reply in (now, then):
        assert json_format.MessageToDict(reply.profile.traits) == {"plan": "pro", "seats": 3}
    parked = await h.store.read_all(filter=EventFilter(event_types=("EventParked",)))
    assert len(parked) == 1, "the live resolver set the garbled message aside, and only it"


async def test_a_profile_too_big_for_one_reply_is_cut_to_fit_flagged_and_every_page_still_answers(
    tmp_path: Path,
) -> None:
    limit = 256 * 1024  # a small send limit, so that a few hundred kilobytes of traits are too many
    async with running_harness(settings_for(tmp_path, max_message_bytes=limit)) as h:
        for n in range(3):
            await h.collect("identify", at=T0 + timedelta(minutes=n), userId=f"small-{n}", traits={"n": n})
        for batch in range(30):  # 3,000 distinct traits of ~200 bytes: about 650 KB
            traits = {f"trait_{batch:02}_{k:03}": "v" * 200 for k in range(100)}
            await h.collect(
                "identify", at=T0 + timedelta(hours=1, minutes=batch), userId="hoarder", traits=traits
            )
        await h.settle()

        ref = user_ref("hoarder")
        reply = await h.stub.GetProfile(pb.GetProfileRequest(profile=ref), metadata=ADMIN)
        kept = set(json_format.MessageToDict(reply.profile.traits))
        assert list(reply.profile.repaired_fields) == ["traits"]
        assert 0 < len(kept) < 3000 and "trait_00_000" in kept, "the first keys are kept, the last cut"
        assert reply.ByteSize() <= limit

        for page_size in (1, 0):
            seen = await listed(h, page_size, limit=limit)
            assert len(seen) == 4 and reply.profile.profile_id in seen
