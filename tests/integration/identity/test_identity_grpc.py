"""Identity over gRPC against a running server and a real SQLite event log (the issue's 'done when')."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import json_format, timestamp_pb2

from cdp.common.v1 import identity_pb2
from cdp.events import EventMetadata
from cdp.events.governance import SubjectErased
from cdp.events.streams import consent_stream
from cdp.identity.v1 import identity_service_pb2 as pb
from cdp.runtime.errors import field_violations
from services.identity import splitting as splitting_module
from tests.integration.identity.conftest import ADMIN, Harness

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
USER = identity_pb2.IDENTIFIER_TYPE_USER_ID
ANON = identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID
EMAIL = identity_pb2.IDENTIFIER_TYPE_EMAIL


def by(identifier_type: identity_pb2.IdentifierType, value: str) -> identity_pb2.ProfileRef:
    return identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type=identifier_type, value=value))


async def profile(h: Harness, ref: identity_pb2.ProfileRef, **kwargs: object) -> pb.GetProfileResponse:
    return await h.stub.GetProfile(pb.GetProfileRequest(profile=ref, **kwargs), metadata=ADMIN)  # type: ignore[arg-type]


async def history(h: Harness, ref: identity_pb2.ProfileRef) -> list[pb.IdentityDecision]:
    reply = await h.stub.GetMergeHistory(pb.GetMergeHistoryRequest(profile=ref), metadata=ADMIN)
    return list(reply.decisions)


async def browse_then_identify_then_alias(h: Harness) -> datetime:
    """Anonymous on a phone and a laptop, identifies on the phone, then the laptop is aliased."""
    await h.collect("track", at=T0, source="ios", event="App Opened", anonymousId="phone-anon")
    await h.collect("page", at=T0 + timedelta(minutes=5), anonymousId="laptop-anon", properties={"path": "/"})
    await h.collect(
        "identify",
        at=T0 + timedelta(minutes=10),
        source="ios",
        anonymousId="phone-anon",
        userId="user-42",
        traits={"email": "  Jane@Example.com", "name": "Jane", "plan": "pro"},
    )
    await h.settle()
    await asyncio.sleep(0.01)
    before_alias = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await h.collect("alias", at=T0 + timedelta(minutes=20), previousId="laptop-anon", userId="user-42")
    await h.settle()
    return before_alias


async def test_anonymous_on_two_devices_then_identify_then_alias_is_one_profile_with_all_history(
    harness: Harness,
) -> None:
    h = harness
    before_alias = await browse_then_identify_then_alias(h)
    reply = await profile(h, by(EMAIL, "jane@example.com"))
    found = reply.profile
    kinds = sorted((i.identifier.type, i.identifier.value) for i in found.identifiers)
    assert kinds == [
        (USER, "user-42"),
        (ANON, "laptop-anon"),
        (ANON, "phone-anon"),
        (EMAIL, "jane@example.com"),
    ]
    assert json_format.MessageToDict(found.traits) == {
        "email": "  Jane@Example.com",
        "name": "Jane",
        "plan": "pro",
    }
    stats = found.stats
    assert stats.message_counts == {"track": 1, "page": 1, "identify": 1, "alias": 1}
    assert stats.event_counts == {"App Opened": 1}
    assert stats.sources == {"ios": 2, "web": 2}
    assert stats.first_seen.ToDatetime(UTC) == T0
    assert stats.last_seen.ToDatetime(UTC) == T0 + timedelta(minutes=20)
    assert not found.HasField("computed_traits") or not found.computed_traits.fields  # the segments service's
    assert len(found.merged_profile_ids) == 1

    decisions = await history(h, by(USER, "user-42"))
    summary = [(d.kind, d.rule) for d in decisions]
    assert (pb.DECISION_KIND_MERGE, pb.DECISION_RULE_ALIAS) in summary
    assert (pb.DECISION_KIND_LINK, pb.DECISION_RULE_SHARED_MESSAGE) in summary
    assert summary.count((pb.DECISION_KIND_CREATE, pb.DECISION_RULE_NEW_IDENTIFIER)) == 2
    merge = next(d for d in decisions if d.kind == pb.DECISION_KIND_MERGE)
    assert merge.source_profile_id == found.merged_profile_ids[0] and merge.cause_message_id.startswith(
        "msg-"
    )
    assert "alias" in merge.explanation

    # The merged-away id still resolves, to the survivor.
    old = await profile(h, identity_pb2.ProfileRef(profile_id=merge.source_profile_id))
    assert old.redirected and old.profile.profile_id == found.profile_id

    # As of before the alias, the laptop was a profile of its own.
    as_of = timestamp_pb2.Timestamp()
    as_of.FromDatetime(before_alias)
    past = await profile(h, by(ANON, "laptop-anon"), as_of=as_of)
    assert past.profile.profile_id == merge.source_profile_id
    assert [i.identifier.value for i in past.profile.identifiers] == ["laptop-anon"]


async def test_a_merge_blocked_by_a_rule_says_which(harness: Harness) -> None:
    h = harness
    await browse_then_identify_then_alias(h)
    await h.collect(
        "identify", at=T0 + timedelta(hours=1), userId="user-7", traits={"email": "jane@example.com"}
    )
    await h.settle()
    jane = (await profile(h, by(USER, "user-42"))).profile
    other = (await profile(h, by(USER, "user-7"))).profile
    assert jane.profile_id != other.profile_id
    refused = [d for d in await history(h, by(USER, "user-7")) if d.kind == pb.DECISION_KIND_REFUSE]
    assert len(refused) == 1
    assert refused[0].rule == pb.DECISION_RULE_VALUE_LIMIT
    assert "user_id" in refused[0].explanation  # user_id is limited to one value per profile
    assert refused[0].source_profile_id == jane.profile_id
    assert [i.value for i in refused[0].identifiers] == ["jane@example.com"]

    # Now both hold a user id: a message carrying user-7 with Jane's phone id would merge them.
    await h.collect("track", at=T0 + timedelta(hours=2), event="x", userId="user-7", anonymousId="phone-anon")
    await h.settle()
    refused = [d for d in await history(h, by(USER, "user-7")) if d.kind == pb.DECISION_KIND_REFUSE]
    assert [d.rule for d in refused] == [pb.DECISION_RULE_VALUE_LIMIT, pb.DECISION_RULE_MERGE_PROTECTION]
    assert "different user ids" in refused[1].explanation
    assert [i.value for i in refused[1].identifiers] == ["phone-anon"]


async def test_a_split_restores_two_profiles_and_prevent_relink_holds(harness: Harness) -> None:
    h = harness
    await browse_then_identify_then_alias(h)
    merge = next(d for d in await history(h, by(USER, "user-42")) if d.kind == pb.DECISION_KIND_MERGE)
    reply = await h.stub.SplitProfile(
        pb.SplitProfileRequest(
            profile=by(USER, "user-42"),
            decision_id=merge.decision_id,
            reason="laptop is shared",
            prevent_relink=True,
        ),
        metadata=ADMIN,
    )
    assert reply.new_profile_id == merge.source_profile_id
    assert reply.decision.kind == pb.DECISION_KIND_SPLIT and reply.decision.explanation == "laptop is shared"
    laptop = (await profile(h, by(ANON, "laptop-anon"))).profile
    jane = (await profile(h, by(USER, "user-42"))).profile
    assert laptop.profile_id == merge.source_profile_id != jane.profile_id
    assert laptop.stats.message_counts == {"page": 1}
    assert len(jane.identifiers) == 3 and not jane.merged_profile_ids

    # The same alias again is refused, naming the operator's split.
    await h.collect("alias", at=T0 + timedelta(hours=2), previousId="laptop-anon", userId="user-42")
    await h.settle()
    assert (await profile(h, by(ANON, "laptop-anon"))).profile.profile_id == laptop.profile_id
    refused = [d for d in await history(h, by(USER, "user-42")) if d.kind == pb.DECISION_KIND_REFUSE]
    assert [d.rule for d in refused] == [pb.DECISION_RULE_MANUAL_SPLIT]


async def test_a_split_rebuilds_the_profiles_as_if_the_link_had_never_been_made(harness: Harness) -> None:
    """A kiosk's anonymous id filled user-9's fifth slot, so a sixth (a5) was refused, and user-10 then claimed
    it. Cutting the kiosk off rebuilds both profiles from their messages: a5 goes back to user-9, who had it
    first, and user-10 is alone, exactly as if the kiosk had never been linked."""
    h = harness
    await h.collect("identify", at=T0, userId="user-9", anonymousId="kiosk")
    for n in range(1, 5):
        await h.collect(
            "track", at=T0 + timedelta(minutes=n), event="Seen", userId="user-9", anonymousId=f"a{n}"
        )
    await h.collect("track", at=T0 + timedelta(minutes=9), event="Seen", userId="user-9", anonymousId="a5")
    await h.settle()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await profile(h, by(ANON, "a5"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    refused = [d for d in await history(h, by(USER, "user-9")) if d.kind == pb.DECISION_KIND_REFUSE]
    assert [i.value for d in refused for i in d.identifiers] == ["a5"]
    await h.collect("identify", at=T0 + timedelta(minutes=20), userId="user-10", anonymousId="a5")
    await h.settle()
    claimed = (await profile(h, by(USER, "user-10"))).profile
    assert sorted(i.identifier.value for i in claimed.identifiers) == ["a5", "user-10"]

    reply = await h.stub.SplitProfile(
        pb.SplitProfileRequest(
            profile=by(USER, "user-9"),
            identifier=identity_pb2.Identifier(type=ANON, value="kiosk"),
            reason="kiosk",
        ),
        metadata=ADMIN,
    )
    user = (await profile(h, by(USER, "user-9"))).profile
    assert sorted(i.identifier.value for i in user.identifiers if i.identifier.type == ANON) == [
        "a1",
        "a2",
        "a3",
        "a4",
        "a5",
    ]
    kiosk = (await profile(h, by(ANON, "kiosk"))).profile
    assert kiosk.profile_id == reply.new_profile_id != user.profile_id
    other = (await profile(h, by(USER, "user-10"))).profile
    assert other.profile_id == claimed.profile_id
    assert [i.identifier.value for i in other.identifiers] == ["user-10"]
    # Histories follow each message's highest-priority identifier: user-10's identify stays with user-10.
    assert other.stats.message_counts == {"identify": 1}

    # The merge histories say why: the rebuild moved a5 back (after the operator's split), and user-10's
    # identify can no longer bring it over (a profile holds one user id).
    steps = [
        (d.kind, d.rule, [i.value for i in d.identifiers]) for d in await history(h, by(USER, "user-10"))
    ]
    assert steps[-2:] == [
        (pb.DECISION_KIND_SPLIT, pb.DECISION_RULE_MANUAL_SPLIT, ["a5"]),
        (pb.DECISION_KIND_REFUSE, pb.DECISION_RULE_VALUE_LIMIT, ["a5"]),
    ]
    moved = next(d for d in await history(h, by(USER, "user-10")) if d.kind == pb.DECISION_KIND_SPLIT)
    assert "rebuilt" in moved.explanation and moved.new_profile_id == user.profile_id
    mine = [(d.kind, [i.value for i in d.identifiers]) for d in await history(h, by(USER, "user-9"))]
    assert (pb.DECISION_KIND_SPLIT, ["kiosk"]) in mine

    # And the log alone rebuilds the same read model.
    live = await h.resolver.snapshot()
    await h.resolver.rebuild()
    assert await h.resolver.snapshot() == live


async def test_a_split_too_large_to_rebuild_still_re_decides_what_it_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond `REBUILD_LIMIT` messages a split re-decides only the refused messages (the kiosk case still
    comes out right; a claimed identifier would not be taken back)."""
    monkeypatch.setattr(splitting_module, "REBUILD_LIMIT", 3)
    h = harness
    await h.collect("identify", at=T0, userId="user-9", anonymousId="kiosk")
    for n in range(1, 6):
        await h.collect(
            "track", at=T0 + timedelta(minutes=n), event="Seen", userId="user-9", anonymousId=f"a{n}"
        )
    await h.settle()
    await h.stub.SplitProfile(
        pb.SplitProfileRequest(
            profile=by(USER, "user-9"),
            identifier=identity_pb2.Identifier(type=ANON, value="kiosk"),
            reason="kiosk",
        ),
        metadata=ADMIN,
    )
    after = [(d.kind, [i.value for i in d.identifiers]) for d in await history(h, by(USER, "user-9"))][-3:]
    assert after == [
        (pb.DECISION_KIND_REFUSE, ["a5"]),
        (pb.DECISION_KIND_SPLIT, ["kiosk"]),
        (pb.DECISION_KIND_LINK, ["a5"]),
    ]


async def test_traits_are_last_write_wins_by_event_time_not_arrival(harness: Harness) -> None:
    h = harness
    await h.collect("identify", at=T0 + timedelta(days=2), userId="u1", traits={"plan": "pro"})
    await h.collect(
        "identify", at=T0, userId="u1", traits={"plan": "free", "city": "Lyon"}
    )  # a late mobile batch
    await h.settle()
    traits = json_format.MessageToDict((await profile(h, by(USER, "u1"))).profile.traits)
    assert traits == {"plan": "pro", "city": "Lyon"}


async def test_erasure_removes_profile_identifiers_and_history(harness: Harness) -> None:
    h = harness
    await browse_then_identify_then_alias(h)
    subject = h.ids("user_id", "user-42")
    await h.store.append(
        consent_stream(subject),
        [
            SubjectErased(request_id="r1", subject_id=subject).to_new_event(
                EventMetadata(actor="service:governance")
            )
        ],
    )
    await h.settle()
    for ref in (by(USER, "user-42"), by(ANON, "laptop-anon"), by(EMAIL, "jane@example.com")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await profile(h, ref)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await h.stub.ListProfiles(pb.ListProfilesRequest(), metadata=ADMIN)
    assert list(listed.profiles) == []


async def test_rebuild_from_the_log_equals_the_live_read_model(harness: Harness) -> None:
    h = harness
    await browse_then_identify_then_alias(h)
    await h.collect(
        "identify", at=T0 + timedelta(hours=1), userId="user-7", traits={"email": "jane@example.com"}
    )
    await h.settle()
    merge = next(d for d in await history(h, by(USER, "user-42")) if d.kind == pb.DECISION_KIND_MERGE)
    await h.stub.SplitProfile(
        pb.SplitProfileRequest(profile=by(USER, "user-42"), decision_id=merge.decision_id, reason="r"),
        metadata=ADMIN,
    )
    live = await h.resolver.snapshot()
    await h.resolver.rebuild()
    assert await h.resolver.snapshot() == live


async def test_list_profiles_filters_and_pages(harness: Harness) -> None:
    h = harness
    for n in range(5):
        await h.collect(
            "identify",
            at=T0 + timedelta(minutes=n),
            userId=f"u{n}",
            traits={"tier": "gold" if n % 2 else "free"},
        )
    await h.collect("track", at=T0, anonymousId="just-browsing", event="Viewed")
    await h.settle()
    seen: list[str] = []
    token = ""
    while True:
        reply = await h.stub.ListProfiles(
            pb.ListProfilesRequest(
                filter=pb.ProfileFilter(identifier_types=[USER]), page={"page_size": 2, "page_token": token}
            ),
            metadata=ADMIN,
        )
        seen += [p.profile_id for p in reply.profiles]
        token = reply.page.next_page_token
        if not token:
            break
    assert len(seen) == 5 and seen == sorted(seen)
    gold = await h.stub.ListProfiles(
        pb.ListProfilesRequest(
            filter=pb.ProfileFilter(traits_equal={"tier": "gold"}), read_mask={"paths": ["traits"]}
        ),
        metadata=ADMIN,
    )
    assert [json_format.MessageToDict(p.traits) for p in gold.profiles] == [{"tier": "gold"}] * 2
    assert all(not p.profile_id for p in gold.profiles)


async def test_rules_are_versioned_validated_and_applied(harness: Harness) -> None:
    h = harness
    bad = pb.IdentityRules(rules=[pb.IdentifierRule(type=EMAIL, blocked_patterns=["(unclosed"])])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await h.stub.SetIdentityRules(pb.SetIdentityRulesRequest(rules=bad), metadata=ADMIN)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(raised.value)] == ["rules.rules[0].blocked_patterns[0]"]
    start = await h.stub.GetIdentityRules(pb.GetIdentityRulesRequest(), metadata=ADMIN)
    assert start.rules.version == 0 and start.rules.rules[0].type == USER
    rules = pb.IdentityRules(
        rules=[
            pb.IdentifierRule(type=USER, value_limit=1),
            pb.IdentifierRule(type=EMAIL, value_limit=1, blocked_values=["test@example.com"]),
            pb.IdentifierRule(type=ANON, value_limit=5),
        ],
        max_merges=10,
    )
    stored = await h.stub.SetIdentityRules(
        pb.SetIdentityRulesRequest(rules=rules, expected_version=0), metadata=ADMIN
    )
    assert stored.rules.version == 1 and stored.rules.updated_by.id == "admin"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await h.stub.SetIdentityRules(
            pb.SetIdentityRulesRequest(rules=rules, expected_version=0), metadata=ADMIN
        )
    assert raised.value.code() == grpc.StatusCode.ABORTED
    rules.max_merges = 20  # a second version is the one in force (get_rules once read the first one back)
    again = await h.stub.SetIdentityRules(
        pb.SetIdentityRulesRequest(rules=rules, expected_version=1), metadata=ADMIN
    )
    current = await h.stub.GetIdentityRules(pb.GetIdentityRulesRequest(), metadata=ADMIN)
    assert (again.rules.version, current.rules.version, current.rules.max_merges) == (2, 2, 20)
    # A blocked e-mail links nothing: two people sharing it stay apart.
    await h.collect("identify", at=T0, anonymousId="a1", traits={"email": "TEST@example.com"})
    await h.collect("identify", at=T0, anonymousId="a2", traits={"email": "test@example.com"})
    await h.settle()
    resolved = await h.stub.Resolve(
        pb.ResolveRequest(
            identifiers=[
                identity_pb2.Identifier(type=ANON, value="a1"),
                identity_pb2.Identifier(type=ANON, value="a2"),
            ]
        ),
        metadata=ADMIN,
    )
    assert resolved.ambiguous and not resolved.HasField("profile_id")


async def test_bad_requests_name_the_field(harness: Harness) -> None:
    h = harness
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await h.stub.GetProfile(pb.GetProfileRequest(), metadata=ADMIN)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(raised.value)] == ["profile"]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await h.stub.SplitProfile(
            pb.SplitProfileRequest(profile=by(USER, "x"), decision_id="d"), metadata=ADMIN
        )
    assert [f for f, _ in field_violations(raised.value)] == ["reason"]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await h.stub.GetProfile(pb.GetProfileRequest(profile=by(USER, "nobody")))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
