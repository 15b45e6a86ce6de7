"""Governance's consent: the `governance-consent` read model and the use cases that set and answer consent.

Every `ConsentChanged` in the log (SetConsent's, and ingest's for consent a collected message stated) becomes
one history row per purpose; the state at any moment is folded from those rows by `domain.consent`. The tables
hold pseudonymous subject ids only, never an identifier in the clear, and a `SubjectErased` deletes the
subject's rows: its consent history goes with the erasure.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Index,
    MetaData,
    Row,
    String,
    Table,
    and_,
    delete,
    or_,
    select,
    tuple_,
)
from sqlalchemy.orm import Session

from cdp.errors import InvalidInput
from cdp.eventlog import EventStore
from cdp.eventlog.port import EventFilter, RecordedEvent
from cdp.events import ConsentChanged, EventMetadata, SubjectErased, from_recorded, streams
from cdp.reactor import Reactor
from cdp.runtime.settings import Settings
from cdp.sqlengine import create_tables, read_only
from services.governance.convert import from_micros, micros
from services.governance.directory import Directory
from services.governance.domain.consent import ConsentDefaults, ConsentState, Decision, consent_at, in_force

if TYPE_CHECKING:  # the RPCs import this module; build_consent imports them when called
    from services.governance.consent_rpcs import ConsentRpcs

NAME = "governance-consent"
MAX_CLOCK_SKEW = timedelta(minutes=1)
"""An effective time this little ahead of the server's clock is taken as now, not refused as in the future."""
_IDEMPOTENCY = uuid.UUID("3b0b8f0e-8a36-4f5e-9f0e-6c1f3f4e2a71")

metadata = MetaData()

changes = Table(
    "governance_consent_changes",
    metadata,
    Column("position", BigInteger, primary_key=True),  # the log's global position of the ConsentChanged
    Column("purpose", String, primary_key=True),
    Column("subject_id", String(64), nullable=False),
    Column("granted", Boolean, nullable=False),
    # The subject's state of the purpose in force just before it (in effective time); null: undecided.
    Column("previous", Boolean, nullable=True),
    Column("effective_us", BigInteger, nullable=False),
    Column("recorded_us", BigInteger, nullable=False),
    Column("source", String, nullable=False),
    Column("source_id", String, nullable=False),
    Column("policy_version", String, nullable=False),
    Column("jurisdiction", String, nullable=False),
    Column("actor", String, nullable=False),
    Column("cause_message_id", String, nullable=False),
    Index("governance_consent_changes_subject", "subject_id", "effective_us", "position"),
)


def source_of(event: ConsentChanged) -> str:
    """Where a decision came from; events written before `source` existed read as the catalog says."""
    return event.source or ("message" if event.source_id else "api")


class ConsentProjection:
    """The `governance-consent` projection: `ConsentChanged` → history rows, `SubjectErased` → rows deleted."""

    name = NAME
    metadata = metadata
    filter = EventFilter(event_types=(ConsentChanged.type_name, SubjectErased.type_name))

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> None:
        """Update the tables for a batch, in the reactor's transaction."""
        for recorded in events:
            event = from_recorded(recorded)
            if isinstance(event, ConsentChanged) and event.purposes:
                self._record(session, recorded, event)
            elif isinstance(event, SubjectErased):
                session.execute(delete(changes).where(changes.c.subject_id == event.subject_id))

    def _record(self, session: Session, recorded: RecordedEvent, event: ConsentChanged) -> None:
        effective = event.effective_at or recorded.recorded_at
        before = in_force(_decisions(session, [event.subject_id], tuple(event.purposes)), effective)
        common = {
            "position": recorded.global_position,
            "subject_id": event.subject_id,
            "effective_us": micros(effective),
            "recorded_us": micros(recorded.recorded_at),
            "source": source_of(event),
            "source_id": event.source_id or "",
            "policy_version": event.policy_version,
            "jurisdiction": event.jurisdiction,  # empty: the default, resolved when answering (rebuilds agree)
            "actor": EventMetadata.of(recorded).actor,
            "cause_message_id": event.cause_message_id,
        }
        session.execute(
            changes.insert(),
            [
                {
                    **common,
                    "purpose": purpose,
                    "granted": granted,
                    "previous": before[purpose].granted if purpose in before else None,
                }
                for purpose, granted in sorted(event.purposes.items())
            ],
        )


def _decisions(
    session: Session, subjects: Sequence[str], purposes: Sequence[str] = (), until_us: int | None = None
) -> list[Decision]:
    query = select(changes).where(changes.c.subject_id.in_(subjects))
    if purposes:
        query = query.where(changes.c.purpose.in_(purposes))
    if until_us is not None:
        query = query.where(changes.c.effective_us <= until_us)
    return [
        Decision(
            subject_id=row.subject_id,
            purpose=row.purpose,
            granted=row.granted,
            effective_at=from_micros(row.effective_us),
            position=row.position,
            source=row.source,
            policy_version=row.policy_version,
            jurisdiction=row.jurisdiction,
        )
        for row in session.execute(query)
    ]


@dataclass(frozen=True)
class ConsentCommand:
    """A command: record decisions for a person, filed under their primary subject."""

    subject_id: str
    purposes: Mapping[str, bool]
    source: str = "api"
    policy_version: str = ""
    jurisdiction: str = ""
    """Empty: the installation's default (recorded as such, so changing the default later changes nothing)."""
    effective_at: datetime | None = None
    """None: now."""
    idempotency_key: str = ""


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded decision for one purpose, as the history answers it."""

    position: int
    subject_id: str
    purpose: str
    granted: bool
    previous: bool | None
    effective_at: datetime
    recorded_at: datetime
    source: str
    policy_version: str
    jurisdiction: str
    actor: str
    cause_message_id: str

    @property
    def cursor(self) -> str:
        """Where the next page starts: this entry's place in the history's order."""
        return f"{micros(self.effective_at)}:{self.position}:{self.purpose}"


@dataclass(frozen=True)
class HistoryQuery:
    """Which changes of a person to list, oldest (in effective time) first."""

    subject_ids: tuple[str, ...]
    purpose: str = ""
    start: datetime | None = None
    """Inclusive."""
    end: datetime | None = None
    """Exclusive."""
    after: str = ""
    """A `HistoryEntry.cursor`: list only what comes after it."""
    limit: int = 50


class ConsentBook:
    """Consent's use cases: set (append, then wait for the read model), get (now or as of), history."""

    def __init__(
        self,
        store: EventStore,
        reactor: Reactor,
        engine: Engine,
        defaults: ConsentDefaults,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        wait_seconds: float = 30.0,
    ) -> None:
        self._store, self._reactor, self._engine = store, reactor, read_only(engine)
        self.defaults, self._clock, self._wait = defaults, clock, wait_seconds

    def now(self) -> datetime:
        """The book's clock."""
        return self._clock()

    async def set(self, command: ConsentCommand, actor: str) -> int:
        """Append the decisions as one `ConsentChanged` and return its position once the read model holds it.

        With an idempotency key, the event id derives from it and the subject: a retried call appends nothing
        and answers the first call's position.
        """
        now = self._clock()
        effective = command.effective_at or now
        if effective > now + MAX_CLOCK_SKEW:
            raise InvalidInput.field("effective_time", "must not be in the future")
        event = ConsentChanged(
            subject_id=command.subject_id,
            purposes=dict(command.purposes),
            source=command.source,
            policy_version=command.policy_version,
            jurisdiction=command.jurisdiction or self.defaults.default_jurisdiction,
            effective_at=min(effective, now),
        )
        event_id = (
            uuid.uuid5(_IDEMPOTENCY, f"{command.subject_id}\x00{command.idempotency_key}")
            if command.idempotency_key
            else uuid.uuid4()
        )
        result = await self._store.append(
            streams.consent_stream(command.subject_id),
            [event.to_new_event(EventMetadata(actor=actor), id=event_id)],
        )
        await self._reactor.wait_for(result.global_position, within=self._wait)
        return result.global_position

    async def get(
        self, subject_ids: Sequence[str], as_of: datetime | None = None, jurisdiction: str = ""
    ) -> ConsentState:
        """A person's consent at `as_of` (None: now), over all their subjects, defaults where undecided."""
        moment = as_of or self._clock()
        decisions = await asyncio.to_thread(self._decisions, tuple(subject_ids), micros(moment))
        return consent_at(decisions, moment, self.defaults, jurisdiction)

    async def history(self, query: HistoryQuery) -> list[HistoryEntry]:
        """A page of a person's recorded decisions, by effective time (then log order, then purpose)."""
        return await asyncio.to_thread(self._history, query)

    def _decisions(self, subject_ids: tuple[str, ...], until_us: int) -> list[Decision]:
        if not subject_ids:
            return []
        default = self.defaults.default_jurisdiction
        with Session(self._engine) as session:
            found = _decisions(session, subject_ids, until_us=until_us)
        return [d if d.jurisdiction else replace(d, jurisdiction=default) for d in found]

    def _history(self, query: HistoryQuery) -> list[HistoryEntry]:
        if not query.subject_ids:
            return []
        c = changes.c
        statement = select(changes).where(c.subject_id.in_(query.subject_ids))
        if query.purpose:
            statement = statement.where(c.purpose == query.purpose)
        if query.start is not None:
            statement = statement.where(c.effective_us >= micros(query.start))
        if query.end is not None:
            statement = statement.where(c.effective_us < micros(query.end))
        if query.after:
            effective_us, position, purpose = _cursor(query.after)
            statement = statement.where(
                or_(
                    tuple_(c.effective_us, c.position) > tuple_(effective_us, position),
                    and_(c.effective_us == effective_us, c.position == position, c.purpose > purpose),
                )
            )
        statement = statement.order_by(c.effective_us, c.position, c.purpose).limit(query.limit)
        default = self.defaults.default_jurisdiction
        with Session(self._engine) as session:
            return [_entry(row, default) for row in session.execute(statement)]


def _cursor(value: str) -> tuple[int, int, str]:
    try:
        effective_us, position, purpose = value.split(":", 2)
        return int(effective_us), int(position), purpose
    except ValueError:
        raise InvalidInput.field("page.page_token", "is not a token this service issued") from None


def _entry(row: Row[Any], default_jurisdiction: str) -> HistoryEntry:
    return HistoryEntry(
        position=row.position,
        subject_id=row.subject_id,
        purpose=row.purpose,
        granted=row.granted,
        previous=row.previous,
        effective_at=from_micros(row.effective_us),
        recorded_at=from_micros(row.recorded_us),
        source=row.source,
        policy_version=row.policy_version,
        jurisdiction=row.jurisdiction or default_jurisdiction,
        actor=row.actor,
        cause_message_id=row.cause_message_id,
    )


def defaults_of(settings: Settings) -> ConsentDefaults:
    """The consent defaults the settings configure (validated at start-up by `Settings.validate`)."""
    return ConsentDefaults.parse(
        settings.consent_purposes, settings.consent_regimes, settings.consent_default_jurisdiction
    )


async def build_consent(
    settings: Settings, store: EventStore, engine: Engine, directory: Directory
) -> tuple[Reactor, ConsentRpcs]:
    """Consent's projection (a reactor for the service to run) and its RPCs, over governance's read model."""
    from services.governance.consent_rpcs import ConsentRpcs

    await asyncio.to_thread(create_tables, metadata, engine)  # questions may come before the first batch
    defaults = defaults_of(settings)
    reactor = Reactor(store, ConsentProjection(), engine)
    return reactor, ConsentRpcs(ConsentBook(store, reactor, engine, defaults), directory)
