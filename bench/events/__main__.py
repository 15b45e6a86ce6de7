"""Event catalog benchmark: decoding and encoding cost per event type, next to orjson alone.

    .venv/bin/python -m bench.events                  # 10,000 events per type, best of 5 rounds (~1 min)
    .venv/bin/python -m bench.events --events 5000    # quicker

The events are what the log holds: `MessageCollected` built and sealed (real keyring, real subject ids) as
ingest writes it, and the four identity decisions encoded by identity's codec. Per type it times, over the
same recorded events in one run:

- `orjson.loads` of the body alone: the baseline every decoder pays;
- the catalog, `from_recorded(recorded)`: what every projection pays;
- identity's codec (messages: the catalog itself, since identity has no decoder of its own; decisions:
  `codec.decode_decision`, which also maps the
  event to the resolver's decision): what the resolver pays per event; and for decisions the catalog followed
  by that mapping (`codec.from_event`), to tell the mapping's cost from the decoder's;

and the encoders: `orjson.dumps` of the body dict (baseline), the catalog's `to_new_event`, and for decisions
identity's `codec.new_event` (its direct encoder of `IdentifierLinked`, the catalog for the other decisions)
beside the catalog's path from a decision. Figures are µs per event and ratios against the baseline measured
in the same run.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson

from cdp.eventlog.port import NewEvent, RecordedEvent
from cdp.events import DomainEvent, EventMetadata, MessageCollected, from_recorded
from cdp.events.ingest import seal_payload
from cdp.events.streams import subject_stream
from cdp.keyring import Keyring, SubjectIds
from cdp.runtime import resources
from cdp.runtime.settings import Settings
from services.identity import codec
from services.identity.domain import decisions as d

T = TypeVar("T")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SOURCE = EventMetadata(actor="source:web")
IDENTIFIERS = (("user_id", "user"), ("anonymous_id", "anon"))
IDENTITY = EventMetadata(actor=codec.ACTOR, correlation_id="c-1", causation_id="e-1")


@dataclass(frozen=True)
class Kind:
    """One event type's recorded events, how identity's codec decodes them, and what built them."""

    name: str
    recorded: list[RecordedEvent]
    direct: Callable[[RecordedEvent], object]
    events: list[DomainEvent]
    metadata: EventMetadata


def personal(n: int, message_type: str) -> dict[str, Any]:
    """What ingest encrypts of a web SDK's message (`personal_payload`): ids, properties, the context."""
    return {
        "userId": f"user-{n}" if message_type != "page" else None,
        "anonymousId": f"anon-{n}",
        "groupId": None,
        "previousId": None,
        "name": None,
        "category": None,
        "properties": {"product_id": f"sku-{n % 500}", "price": 19.99, "currency": "EUR"},
        "traits": {"email": f"person.{n}@example.com", "plan": "pro"} if message_type == "identify" else {},
        "context": {
            "ip": "203.0.113.9",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "page": {"path": "/products/sku", "url": "https://shop.example/products/sku"},
        },
        "integrations": {},
    }


def collected(
    keyring: Keyring, ids: SubjectIds, n: int, message_type: str, flagged: bool
) -> MessageCollected:
    """A MessageCollected as ingest's collector builds it (see services/ingest/application.py)."""
    identifiers = {"anonymous_id": ids("anonymous_id", f"anon-{n}")}
    if message_type != "page":
        identifiers["user_id"] = ids("user_id", f"user-{n}")
    subject = identifiers.get("user_id") or identifiers["anonymous_id"]
    return MessageCollected(
        message_id=str(uuid.uuid4()),
        message_type=message_type,
        source_id="web",
        subject_id=subject,
        event_name="Product Viewed" if message_type == "track" else None,
        timestamp=T0 + timedelta(seconds=n),
        received_at=T0 + timedelta(seconds=n, milliseconds=80),
        sent_at=T0 + timedelta(seconds=n, milliseconds=40),
        identifiers=identifiers,
        payload=seal_payload(keyring, subject, personal(n, message_type)),
        plan_violations=("unplanned_property:properties.position",) if flagged else (),
    )


def decision(ids: SubjectIds, n: int, kind: str) -> d.Decision:
    """One decision of each kind, with the fields the resolver fills in (uuid ids, real subject ids)."""
    decision_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    profile, other = str(uuid.uuid4()), str(uuid.uuid4())
    subject, second = ids("email", f"person.{n}@example.com"), ids("anonymous_id", f"anon-{n}")
    if kind == "IdentifierLinked":
        return d.Linked(decision_id, profile, "email", subject, "shared_message", n % 3 == 0, T0, message_id)
    if kind == "ProfilesMerged":
        return d.Merged(decision_id, profile, other, "alias", message_id, T0)
    if kind == "MergeRejected":
        return d.Rejected(
            decision_id, profile, other, "value_limit:email", "email", subject, message_id, T0, 1000 + n
        )
    return d.Split(decision_id, profile, other, (subject, second), "shared tablet", True, "", T0)


def record(new: NewEvent, stream: str, position: int) -> RecordedEvent:
    """What the log hands back for an appended event."""
    return RecordedEvent(new.id, stream, 0, position, new.type, new.data, new.metadata, T0)


def message_kind(name: str, messages: list[MessageCollected]) -> Kind:
    """Recorded MessageCollected events, which identity decodes with the catalog (`from_recorded`)."""
    news = [m.to_new_event(SOURCE) for m in messages]
    recorded = [
        record(e, subject_stream(m.subject_id), i)
        for i, (e, m) in enumerate(zip(news, messages, strict=True))
    ]
    return Kind(name, recorded, from_recorded, list(messages), SOURCE)


def decision_kind(name: str, decisions: list[d.Decision]) -> Kind:
    """Recorded decision events as identity's codec encodes them, decoded by `codec.decode_decision`."""
    recorded = [record(codec.new_event(x, IDENTITY), codec.stream_of(x), i) for i, x in enumerate(decisions)]
    events = [codec.to_event(x) for x in decisions]
    return Kind(name, recorded, codec.decode_decision, events, IDENTITY)


def kinds(count: int, folder: str) -> list[Kind]:
    """Every event type measured, `count` events each."""
    settings = Settings.from_env({"CDP_DATA_DIR": folder})
    keyring, ids = resources.keyring(settings), resources.subject_ids(settings)
    try:
        # Every data key created up front, in one transaction, rather than one per sealed message.
        keyring.data_keys(ids(t, f"{p}-{n}") for n in range(count) for t, p in IDENTIFIERS)
        found = [
            message_kind(
                f"MessageCollected {t}", [collected(keyring, ids, n, t, False) for n in range(count)]
            )
            for t in ("track", "identify", "page")
        ]
        flagged = [collected(keyring, ids, n, "track", True) for n in range(count)]
        found.append(message_kind("MessageCollected flagged", flagged))
    finally:
        keyring.close()
    for name in codec.DECISION_TYPES:
        found.append(decision_kind(name, [decision(ids, n, name) for n in range(count)]))
    return found


def best(work: Callable[[T], object], items: Sequence[T], rounds: int) -> float:
    """µs per item of `work(item)` over every item, in the fastest round (the machine is shared: the best
    round is the least disturbed).

    Results are dropped as they come, as a projection drops an event once applied: keeping thousands alive
    would bill each decoder for fresh memory and for garbage collections caused by the ones before it.
    """
    fastest = float("inf")
    for _ in range(rounds):
        gc.collect()
        started = time.perf_counter()
        for item in items:
            work(item)
        fastest = min(fastest, time.perf_counter() - started)
    return fastest / len(items) * 1e6


def decoding(kind: Kind, rounds: int) -> tuple[float, ...]:
    """µs per event: orjson.loads of the body, the catalog's decoder, identity's codec, and for decisions
    the catalog's decoder followed by `codec.from_event` (what the codec's decision decoder does on top)."""
    events = kind.recorded
    baseline = best(lambda r: orjson.loads(r.data), events, rounds)
    catalog = best(from_recorded, events, rounds)
    direct = best(kind.direct, events, rounds)
    if kind.direct is not codec.decode_decision:
        return baseline, catalog, direct, 0.0
    mapped = best(lambda r: codec.from_event(str(r.id), from_recorded(r)), events, rounds)
    return baseline, catalog, direct, mapped


def encoding(kind: Kind, rounds: int) -> tuple[float, ...]:
    """µs per event: orjson.dumps of the body, the catalog's `to_new_event` (with the event's id, as ingest and
    identity pass one), and for decisions identity's `codec.new_event` and the catalog's path from a decision
    (`to_event`, the id parsed, `to_new_event`: what `new_event` does for all but `IdentifierLinked`)."""
    bodies = [orjson.loads(r.data) for r in kind.recorded]
    baseline = best(lambda b: orjson.dumps(b, option=orjson.OPT_SORT_KEYS), bodies, rounds)
    pairs = list(zip(kind.events, kind.recorded, strict=True))
    catalog = best(lambda pair: pair[0].to_new_event(kind.metadata, id=pair[1].id), pairs, rounds)
    decisions = _decisions_of(kind)
    if not decisions:
        return baseline, catalog, 0.0, 0.0
    direct = best(lambda x: codec.new_event(x, IDENTITY), decisions, rounds)
    mapped = best(
        lambda x: codec.to_event(x).to_new_event(IDENTITY, id=uuid.UUID(x.decision_id)), decisions, rounds
    )
    return baseline, catalog, direct, mapped


def _decisions_of(kind: Kind) -> list[d.Decision]:
    found = [codec.from_event(str(r.id), e) for r, e in zip(kind.recorded, kind.events, strict=True)]
    return [x for x in found if x is not None]


def print_table(title: str, columns: Sequence[str], rows: list[tuple[str, int, tuple[float, ...]]]) -> None:
    """µs per event and each column's ratio to the baseline (the first)."""
    print(f"\n{title} (µs per event, best of the rounds; x: ratio to {columns[0]})")
    print(f"  {'event type':<26} {'bytes':>6} " + " ".join(f"{c:>16}" for c in columns))
    for name, size, (base, *others) in rows:
        cells = [f"{base:>16.2f}"] + [f"{x:>8.2f} ({x / base:>4.1f}x)" if x else f"{'-':>16}" for x in others]
        print(f"  {name:<26} {size:>6} " + " ".join(cells))


def main() -> None:
    """Build the events, time every decoder and encoder, print the figures."""
    args = parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="cdp-bench-events-") as folder:
        measured = kinds(args.events, folder)
    print(f"{args.events:,} events per type, {args.rounds} rounds")
    size = {k.name: sum(len(r.data) for r in k.recorded) // len(k.recorded) for k in measured}
    print_table(
        "decoding",
        ("orjson.loads", "catalog", "identity codec", "catalog+mapping"),
        [(k.name, size[k.name], decoding(k, args.rounds)) for k in measured],
    )
    print_table(
        "encoding",
        ("orjson.dumps", "catalog", "identity codec", "mapping+catalog"),
        [(k.name, size[k.name], encoding(k, args.rounds)) for k in measured],
    )


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="events per type")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure; the best is shown")
    return parser.parse_args()


if __name__ == "__main__":
    main()
