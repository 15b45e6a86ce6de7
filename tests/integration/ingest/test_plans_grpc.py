"""Tracking plans and the attribute catalog over real gRPC: publish, enforce (flag, block, omit), count
violations, survive a restart; define and list attributes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from cdp.common.v1 import message_pb2
from cdp.ingest.v1 import ingest_service_pb2 as pb
from cdp.reactor import Reactor
from cdp.runtime import resources
from cdp.runtime.errors import field_violations
from cdp.sqlengine import create_read_model_engine
from services.ingest.config_readmodel import ConfigView, ViolationFilter
from tests.integration.ingest.conftest import WRITE_KEY, Ingest, message, running_ingest, settings_for
from tests.waiting import eventually

ADMIN = (("authorization", "Bearer dev-admin-token"),)
IOS_KEY = (("authorization", "Bearer ios-key"),)
ORDER_SCHEMA = {
    "type": "object",
    "properties": {"revenue": {"type": "number"}, "currency": {"enum": ["EUR", "USD"]}},
    "required": ["revenue"],
}


def struct(document: dict[str, Any]) -> Struct:
    return json_format.ParseDict(document, Struct())


def shop_plan(**changes: Any) -> pb.TrackingPlan:
    plan = pb.TrackingPlan(
        plan_id="shop",
        display_name="Shop",
        events=[
            pb.PlannedEvent(
                message_type=message_pb2.MESSAGE_TYPE_TRACK,
                event="Order Completed",
                json_schema=struct(ORDER_SCHEMA),
            )
        ],
        sources=[
            pb.SourceEnforcement(
                source_id="web",
                unplanned_events=pb.ENFORCEMENT_MODE_FLAG,
                schema_violations=pb.ENFORCEMENT_MODE_FLAG,
                omit_unplanned_properties=True,
            ),
            pb.SourceEnforcement(
                source_id="ios",
                unplanned_events=pb.ENFORCEMENT_MODE_BLOCK,
                schema_violations=pb.ENFORCEMENT_MODE_BLOCK,
            ),
        ],
    )
    for name, value in changes.items():
        setattr(plan, name, value)
    return plan


async def publish(ingest: Ingest, plan: pb.TrackingPlan, **fields: Any) -> pb.TrackingPlan:
    reply = await ingest.stub.PublishTrackingPlan(
        pb.PublishTrackingPlanRequest(plan=plan, **fields), metadata=ADMIN
    )
    return reply.plan


def order(message_id: str, **properties: Any) -> pb.TrackRequest:
    return pb.TrackRequest(
        message=message(userId="u-1", event="Order Completed", messageId=message_id, properties=properties)
    )


async def violations(ingest: Ingest, expected_total: int, **filters: Any) -> list[pb.ViolationCount]:
    """Poll ListViolations until the counts add up (projection and blocked tally are asynchronous)."""
    counts: list[pb.ViolationCount] = []

    async def added_up() -> bool:
        reply = await ingest.stub.ListViolations(pb.ListViolationsRequest(**filters), metadata=ADMIN)
        counts[:] = list(reply.counts)
        return sum(c.count for c in counts) >= expected_total

    await eventually(added_up)
    return counts


async def test_publishing_versions_a_plan_and_get_returns_latest_or_given(ingest: Ingest) -> None:
    first = await publish(ingest, shop_plan(), expected_version=0)
    assert first.version == 1 and first.published_by.id == "admin" and first.publish_time.seconds > 0
    second = await publish(ingest, shop_plan(display_name="Shop v2"), expected_version=1)
    assert second.version == 2
    latest = await ingest.stub.GetTrackingPlan(pb.GetTrackingPlanRequest(plan_id="shop"), metadata=ADMIN)
    old = await ingest.stub.GetTrackingPlan(
        pb.GetTrackingPlanRequest(plan_id="shop", version=1), metadata=ADMIN
    )
    assert (latest.plan.version, latest.plan.display_name) == (2, "Shop v2")
    assert (old.plan.version, old.plan.display_name) == (1, "Shop")
    assert json_format.MessageToDict(old.plan.events[0].json_schema) == ORDER_SCHEMA
    assert old.plan.sources[0].omit_unplanned_properties

    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await publish(ingest, shop_plan(), expected_version=1)
    assert stale.value.code() == grpc.StatusCode.ABORTED
    checked = await publish(ingest, shop_plan(display_name="draft"), validate_only=True)
    assert checked.version == 3
    again = await ingest.stub.GetTrackingPlan(pb.GetTrackingPlanRequest(plan_id="shop"), metadata=ADMIN)
    assert again.plan.version == 2, "validate_only publishes nothing"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await ingest.stub.GetTrackingPlan(
            pb.GetTrackingPlanRequest(plan_id="shop", version=7), metadata=ADMIN
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_invalid_schema_is_refused_naming_the_event_and_schema_path(ingest: Ingest) -> None:
    bad = shop_plan()
    bad.events.add(
        message_type=message_pb2.MESSAGE_TYPE_TRACK,
        event="Cart Viewed",
        json_schema=struct({"properties": {"items": {"type": "lists"}}}),
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await publish(ingest, bad)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(raised.value)] == [
        "plan.events[1].json_schema.properties.items.type"
    ]
    with pytest.raises(grpc.aio.AioRpcError) as writer:
        await ingest.stub.PublishTrackingPlan(
            pb.PublishTrackingPlanRequest(plan=shop_plan()), metadata=WRITE_KEY
        )
    assert writer.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_flag_mode_stores_the_message_with_its_violations_and_omits_unplanned_properties(
    ingest: Ingest,
) -> None:
    await publish(ingest, shop_plan())
    reply = await ingest.stub.Track(
        order("o-1", revenue="ten", currency="EUR", coupon="X"), metadata=WRITE_KEY
    )
    assert reply.result.status == pb.MESSAGE_STATUS_ACCEPTED
    assert {(v.reason, v.field) for v in reply.result.plan_violations} == {
        (pb.VIOLATION_REASON_UNPLANNED_PROPERTY, "properties.coupon"),
        (pb.VIOLATION_REASON_INVALID_TYPE, "properties.revenue"),
    }
    [stored] = await ingest.collected()
    assert sorted(stored.plan_violations) == [
        "invalid_type:properties.revenue",
        "unplanned_property:properties.coupon",
    ]
    assert stored.open_payload(ingest.keyring)["properties"] == {"revenue": "ten", "currency": "EUR"}


async def test_block_mode_rejects_and_nothing_is_stored(ingest: Ingest) -> None:
    await publish(ingest, shop_plan())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.stub.Track(order("o-2", currency="EUR"), metadata=IOS_KEY)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("message.properties.revenue", "is required") in field_violations(raised.value)
    batch = await ingest.stub.Batch(
        pb.BatchRequest(
            messages=[
                message(userId="u", event="Cart Viewed", messageId="b-1"),
                message(userId="u", event="Order Completed", messageId="b-2", properties={"revenue": 3}),
            ]
        ),
        metadata=IOS_KEY,
    )
    assert [r.status for r in batch.results] == [pb.MESSAGE_STATUS_REJECTED, pb.MESSAGE_STATUS_ACCEPTED]
    assert batch.results[0].reason == pb.REJECTION_REASON_TRACKING_PLAN_BLOCKED
    assert [e.message_id for e in await ingest.collected()] == ["b-2"]


async def test_list_violations_counts_flagged_and_blocked_by_source_event_reason_and_field(
    ingest: Ingest,
) -> None:
    await publish(ingest, shop_plan())
    for n in range(3):
        await ingest.stub.Track(order(f"w-{n}", revenue="x"), metadata=WRITE_KEY)
    for n in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await ingest.stub.Track(
                pb.TrackRequest(message=message(userId="u", event="Secret Event", messageId=f"i-{n}")),
                metadata=IOS_KEY,
            )
    counts = await violations(ingest, 5, plan_id="shop")
    summary = {(c.source_id, c.event, c.reason, c.field): (c.count, c.blocked_count) for c in counts}
    assert summary == {
        ("web", "Order Completed", pb.VIOLATION_REASON_INVALID_TYPE, "properties.revenue"): (3, 0),
        ("ios", "Secret Event", pb.VIOLATION_REASON_UNPLANNED_EVENT, ""): (2, 2),
    }
    assert counts[0].count == 3 and counts[0].plan_version == 1, (
        "largest first, attributed to the plan version"
    )
    only_ios = await violations(ingest, 2, source_id="ios")
    assert [c.source_id for c in only_ios] == ["ios"]
    paged = await ingest.stub.ListViolations(pb.ListViolationsRequest(page={"page_size": 1}), metadata=ADMIN)
    assert len(paged.counts) == 1 and paged.page.next_page_token
    rest = await ingest.stub.ListViolations(
        pb.ListViolationsRequest(page={"page_size": 1, "page_token": paged.page.next_page_token}),
        metadata=ADMIN,
    )
    assert len(rest.counts) == 1 and not rest.page.next_page_token and rest.counts[0] != paged.counts[0]


async def test_a_published_plan_is_enforced_after_a_restart(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with running_ingest(settings) as ingest:
        await publish(ingest, shop_plan())
    async with running_ingest(settings) as ingest:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await ingest.stub.Track(order("r-1", revenue="x"), metadata=IOS_KEY)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_blocked_counts_survive_a_stop_that_comes_before_their_flush(tmp_path: Path) -> None:
    """`make down` right after blocked messages: the tally is written on the way out, not lost."""
    settings = settings_for(tmp_path)
    async with running_ingest(settings) as ingest:
        await publish(ingest, shop_plan())
        for n in range(7):
            with pytest.raises(grpc.aio.AioRpcError):
                await ingest.stub.Track(
                    pb.TrackRequest(message=message(userId="u", event="Secret Event", messageId=f"s-{n}")),
                    metadata=IOS_KEY,
                )
    async with running_ingest(settings) as ingest:
        [counted] = await violations(ingest, 7, source_id="ios")
        assert (counted.count, counted.blocked_count) == (7, 7)


async def test_attributes_are_defined_versioned_and_listed(ingest: Ingest) -> None:
    age = pb.Attribute(
        attribute_id="age",
        attribute="age",
        type=pb.ATTRIBUTE_TYPE_INTEGER,
        description="Age in years",
        bands=[pb.Band(label="<25", upper_bound=25), pb.Band(label="25+", lower_bound=25)],
    )
    created = await ingest.stub.DefineAttribute(pb.DefineAttributeRequest(attribute=age), metadata=ADMIN)
    assert created.created and created.attribute.version == 1
    assert (
        not created.attribute.bands[0].HasField("lower_bound")
        and created.attribute.bands[0].upper_bound == 25
    )
    age.description = "Age in whole years"
    replaced = await ingest.stub.DefineAttribute(
        pb.DefineAttributeRequest(attribute=age, expected_version=1), metadata=ADMIN
    )
    assert not replaced.created and replaced.attribute.version == 2
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await ingest.stub.DefineAttribute(
            pb.DefineAttributeRequest(attribute=age, expected_version=1), metadata=ADMIN
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    country = pb.Attribute(attribute_id="country", attribute="country", type=pb.ATTRIBUTE_TYPE_STRING)
    await ingest.stub.DefineAttribute(pb.DefineAttributeRequest(attribute=country), metadata=ADMIN)

    await ingest.settled()  # the catalog is a read model: projected in the background
    page = await ingest.stub.ListAttributes(pb.ListAttributesRequest(page={"page_size": 1}), metadata=ADMIN)
    rest = await ingest.stub.ListAttributes(
        pb.ListAttributesRequest(page={"page_size": 1, "page_token": page.page.next_page_token}),
        metadata=ADMIN,
    )
    listed = [*page.attributes, *rest.attributes]
    assert [(a.attribute_id, a.version) for a in listed] == [("age", 2), ("country", 1)]
    assert listed[0].description == "Age in whole years"


async def test_bad_banding_rules_are_refused_naming_the_rule(ingest: Ingest) -> None:
    overlapping = pb.Attribute(
        attribute_id="spend",
        attribute="spend",
        type=pb.ATTRIBUTE_TYPE_NUMBER,
        bands=[
            pb.Band(label="low", lower_bound=0, upper_bound=100),
            pb.Band(label="mid", lower_bound=50, upper_bound=250),
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.stub.DefineAttribute(pb.DefineAttributeRequest(attribute=overlapping), metadata=ADMIN)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(raised.value)] == ["attribute.bands[1]"]


async def test_the_config_read_model_rebuilt_from_the_log_equals_the_live_one(
    ingest: Ingest, tmp_path: Path
) -> None:
    await publish(ingest, shop_plan())
    for n in range(3):
        await ingest.stub.Track(order(f"f-{n}", revenue="x", extra=n), metadata=WRITE_KEY)
    await ingest.stub.DefineAttribute(
        pb.DefineAttributeRequest(
            attribute=pb.Attribute(attribute_id="plan", attribute="plan", type=pb.ATTRIBUTE_TYPE_STRING)
        ),
        metadata=ADMIN,
    )
    await violations(ingest, 6, source_id="web")  # 3 invalid types + 3 omitted properties, projected live
    live = ConfigView(resources.read_model_engine(ingest.settings, "ingest"))
    await ingest.settled()
    engine = create_read_model_engine(f"sqlite:///{tmp_path / 'rebuilt.db'}")
    rebuilt = ConfigView(engine)
    await Reactor(ingest.log, rebuilt, engine).catch_up()
    web = ViolationFilter(source_id="web")  # blocked counts are a counter table, not part of the projection
    assert rebuilt.violations(web, 100, 0) == live.violations(web, 100, 0)
    assert rebuilt.attributes(10, "") == live.attributes(10, "")
    assert sum(c.count for c in rebuilt.violations(web, 100, 0)[0]) == 6
