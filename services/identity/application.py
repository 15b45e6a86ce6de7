"""Identity use cases: read what is needed, decide, append events. No transport, no SQL here."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cdp.errors import Conflict, FieldViolation, InvalidInput, NotFound
from cdp.eventlog.port import EventStore, ExpectedVersion, WrongExpectedVersion
from cdp.events import EventMetadata, from_recorded
from cdp.events.identity import IdentityRulesSet
from cdp.events.streams import config_stream
from cdp.keyring import Keyring
from cdp.sqlengine import read_only
from services.identity import queries
from services.identity.domain.decisions import Split
from services.identity.domain.graph import Graph
from services.identity.domain.identifiers import Hasher, normalise
from services.identity.domain.rules import Rules, default_rules, rules_from_json, rules_to_json
from services.identity.domain.splits import SplitRequest, plan_split
from services.identity.observer import Observer
from services.identity.readmodel import State, decision_row
from services.identity.replay import replay_profile
from services.identity.resolver import Resolver

RULES_STREAM = config_stream("identity")
T = TypeVar("T")


@dataclass(frozen=True)
class IdentifierRef:
    """An identifier as a caller names it: a type (`email`, `external:crm_id`) and a raw value."""

    type: str
    value: str


@dataclass(frozen=True)
class ProfileRef:
    """A profile by id, or by any of its identifiers (exactly one is set)."""

    profile_id: str | None = None
    identifier: IdentifierRef | None = None


@dataclass(frozen=True)
class RulesInForce:
    """The rules with their version and who set them when."""

    rules: Rules
    version: int
    update_time: datetime | None
    updated_by: str


class IdentityApp:
    """The use cases behind `cdp.identity.v1.IdentityService`."""

    def __init__(
        self,
        store: EventStore,
        resolver: Resolver,
        engine: Engine,
        hasher: Hasher,
        keyring: Keyring,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store, self._resolver, self._engine = store, resolver, read_only(engine)
        self._hasher, self._keyring, self._clock = hasher, keyring, clock

    def subject_of(self, ref: IdentifierRef) -> tuple[str, str] | None:
        """`(normalised value, subject id)`, or None when the value can never identify anyone."""
        value = normalise(ref.type, ref.value)
        if value is None:
            return None
        return value, self._hasher(ref.type, value)

    async def resolve(
        self, refs: Sequence[IdentifierRef]
    ) -> tuple[str | None, list[tuple[IdentifierRef, str | None]], bool]:
        """Which profile the identifiers belong to: `(profile, per-identifier matches, ambiguous)`."""
        matches = await self._read(lambda s: [self._match(s, ref) for ref in refs])
        known = {profile for _, profile in matches if profile is not None}
        ambiguous = len(known) > 1
        return (next(iter(known)) if len(known) == 1 else None), matches, ambiguous

    async def get_profile(
        self, ref: ProfileRef, as_of: datetime | None = None
    ) -> tuple[queries.ProfileRecord, bool]:
        """A profile now (or as it was at `as_of`, replayed from the log); True when redirected."""
        if as_of is not None:
            return await self._profile_as_of(ref, as_of)

        def read(session: Session) -> tuple[queries.ProfileRecord, bool]:
            live, redirected = self._live(session, ref)
            record = queries.load_profile(session, live)
            if record is None:
                raise NotFound("no such profile")
            return record, redirected

        return await self._read(read)

    async def list_profiles(
        self, query: queries.ProfileQuery, after: str, limit: int
    ) -> tuple[list[queries.ProfileRecord], bool]:
        """A page of live profiles ordered by id; True when another page follows."""
        return await self._read(lambda s: queries.list_profiles(s, query, after, limit))

    async def merge_history(
        self, ref: ProfileRef, start: datetime | None, end: datetime | None, after: int, limit: int
    ) -> tuple[str, list[dict[str, Any]], dict[str, tuple[str, str]]]:
        """The profile's decisions and those of the profiles merged into it, oldest first, with clear values."""

        def read(session: Session) -> tuple[str, list[dict[str, Any]], dict[str, tuple[str, str]]]:
            live, _ = self._live(session, ref)
            ids = [live, *queries.merged_into(session, live)]
            rows = queries.decision_rows(session, ids, start, end, after, limit)
            subjects = [entry[-1] for row in rows for entry in row["identifiers"]]
            return live, rows, queries.clear_values(session, subjects)

        return await self._read(read)

    async def split(
        self,
        ref: ProfileRef,
        *,
        identifier: IdentifierRef | None,
        decision_id: str | None,
        reason: str,
        prevent_relink: bool,
        actor: str,
    ) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
        """Cut an identifier or undo a link/merge; returns the SPLIT decision's row and clear values."""
        request = await self._split_request(identifier, decision_id)
        at = self._clock()

        def build(state: State) -> Split:
            profile = self._live_in_graph(state, ref)
            return plan_split(
                state.graph,
                profile,
                request,
                decision_id=str(uuid.uuid4()),
                new_profile=str(uuid.uuid4()),
                reason=reason,
                prevent_relink=prevent_relink,
                at=at,
            )

        # The re-decisions (refused identifiers re-admitted, refusals that still stand) are in the merge
        # history after the split; the response carries the split itself.
        decision, _ = await self._resolver.split(build, actor)
        clear = await self._read(lambda s: queries.clear_values(s, decision.subjects))
        return decision_row(0, decision), clear

    async def set_rules(self, rules: Rules, expected_version: int | None, actor: str) -> RulesInForce:
        """Append a new version of the rules (optimistic concurrency on the version)."""
        priority = tuple(rule.type for rule in rules.rules)
        limits = {rule.type: rule.value_limit for rule in rules.rules if rule.value_limit is not None}
        event = IdentityRulesSet(
            priority=priority, limits=limits, rules=rules_to_json(rules), max_merges=rules.max_merges
        )
        expected: ExpectedVersion | int = ExpectedVersion.ANY
        if expected_version is not None:
            expected = ExpectedVersion.NO_STREAM if expected_version == 0 else expected_version - 1
        try:
            result = await self._store.append(
                RULES_STREAM, [event.to_new_event(EventMetadata(actor=actor))], expected
            )
        except WrongExpectedVersion as error:
            raise Conflict("the identity rules changed since you read them; read them again") from error
        await self._resolver.wait_for(result.global_position)
        return await self.get_rules()

    async def get_rules(self) -> RulesInForce:
        """The rules in force: the last version set, or the defaults (version 0)."""
        last = await self._store.read_stream(RULES_STREAM, backwards=True, limit=1)
        if not last:
            return RulesInForce(default_rules(), 0, None, "")
        event = from_recorded(last[0])
        assert isinstance(event, IdentityRulesSet)
        version = last[0].stream_position + 1
        rules = rules_from_json(event.rules, event.max_merges, version, event.priority)
        return RulesInForce(rules, version, last[0].recorded_at, last[0].metadata.get("actor", ""))

    async def _profile_as_of(self, ref: ProfileRef, as_of: datetime) -> tuple[queries.ProfileRecord, bool]:
        state = State()
        observer = Observer(state, self._keyring, self._hasher)
        profile, values = await replay_profile(self._store, observer, self._locate(ref), until=as_of)
        record = (
            None
            if profile is None
            else queries.record_from_state(state, profile, lambda s: values.get(s, ""))
        )
        if profile is None or record is None:
            raise NotFound("no such profile at that time")
        return record, ref.profile_id is not None and ref.profile_id != profile

    def _locate(self, ref: ProfileRef) -> Callable[[Graph], str | None]:
        """Where the reference points in a graph (the live profile), or None."""
        found = self.subject_of(ref.identifier) if ref.identifier is not None else None

        def locate(graph: Graph) -> str | None:
            if ref.profile_id is not None:
                return graph.resolve(ref.profile_id)
            return graph.profile_of(found[1]) if found is not None else None

        return locate

    def _live(self, session: Session, ref: ProfileRef) -> tuple[str, bool]:
        if ref.profile_id is not None:
            live = queries.live_profile(session, ref.profile_id)
            if live is None:
                raise NotFound("no such profile")
            return live, live != ref.profile_id
        assert ref.identifier is not None
        found = self.subject_of(ref.identifier)
        profile = queries.profile_of_subject(session, found[1]) if found else None
        if profile is None:
            raise NotFound("no profile has this identifier")
        return profile, False

    def _live_in_graph(self, state: State, ref: ProfileRef) -> str:
        live = self._locate(ref)(state.graph)
        if live is None:
            raise NotFound("no such profile")
        return live

    async def _split_request(self, identifier: IdentifierRef | None, decision_id: str | None) -> SplitRequest:
        """The operator's target: an identifier's subject, or the stored decision to undo."""
        if decision_id:
            row = await self._read(lambda s: queries.decision_by_id(s, decision_id))
            if row is None:
                raise NotFound("no such decision")
            target = (
                row["other_profile_id"]
                if row["kind"] == "merge"
                else row["identifiers"][0][-1]
                if row["identifiers"]
                else ""
            )
            return SplitRequest(undo_id=decision_id, undo_kind=row["kind"], undo_target=target)
        found = self.subject_of(identifier) if identifier is not None else None
        if found is None:
            raise InvalidInput(FieldViolation("identifier.value", "is not a usable identifier value"))
        return SplitRequest(subject=found[1])

    def _match(self, session: Session, ref: IdentifierRef) -> tuple[IdentifierRef, str | None]:
        found = self.subject_of(ref)
        if found is None:
            return ref, None
        return IdentifierRef(ref.type, found[0]), queries.profile_of_subject(session, found[1])

    async def _read(self, query: Callable[[Session], T]) -> T:
        def run() -> T:
            with Session(self._engine) as session:
                return query(session)

        return await asyncio.to_thread(run)
