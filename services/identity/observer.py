"""Turning recorded events into what identity decides on: observations of messages, rules in force, histories."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import structlog

from cdp.eventlog.port import RecordedEvent
from cdp.events.identity import IdentityRulesSet
from cdp.events.ingest import MessageCollected
from cdp.keyring import DecryptionFailed, Keyring
from cdp.keyring import SubjectErased as KeyErased
from cdp.payload import repaired as repaired_json
from services.identity.domain.decider import Observation
from services.identity.domain.history import History
from services.identity.domain.identifiers import Hasher
from services.identity.domain.rules import rules_from_json
from services.identity.prepare import HashCache, IdentitiesCache, Opened, opened_from
from services.identity.readmodel import State

log = structlog.get_logger("cdp.identity.observer")


class Observer:
    """Turns recorded events into state changes; shared by the live resolver, the rebuild and `as_of`."""

    def __init__(
        self,
        state: State,
        keyring: Keyring,
        hasher: Hasher,
        cache: dict[tuple[str, str], str] | None = None,
        identities: IdentitiesCache | None = None,
    ) -> None:
        self.state, self.keyring = state, keyring
        self._identities = IdentitiesCache() if identities is None else identities
        self.hasher: Hasher = HashCache(hasher, cache)

    def observe(self, recorded: RecordedEvent, event: MessageCollected) -> Observation | None:
        """Open the message and remember its identifier values (`record` adds it to history); None if shredded."""
        try:
            payload: Mapping[str, Any] | None = event.open_payload(self.keyring)
        except (KeyErased, DecryptionFailed):
            payload = None  # shredded: nothing of this person may reach the read model
        opened = opened_from(event, payload, self.state.rules, self._identities, self.hasher)
        return self._observation(recorded, opened)

    def opened(self, recorded: RecordedEvent, message: Opened) -> Observation | None:
        """`observe` of a message a worker opened (`prepare`); None if shredded."""
        return self._observation(recorded, message)

    def _observation(self, recorded: RecordedEvent, message: Opened) -> Observation | None:
        ids, previous = message.identities, message.previous
        if ids is None:
            return None
        for identity in (*ids, *(previous or ())):
            self.state.remember_value(identity.subject, identity.type, identity.value)
        return Observation(
            event_id=str(recorded.id),
            message_id=message.message_id,
            message_type=message.message_type,
            timestamp=message.timestamp,
            identities=ids,
            previous=previous,
            source_id=message.source_id,
            event_name=message.event_name,
            traits=_storable(message.traits, str(recorded.id)),
            position=recorded.global_position,
        )

    def set_rules(self, event: IdentityRulesSet, version: int) -> None:
        """Rules in force from this point of the log."""
        self.state.rules = rules_from_json(event.rules, event.max_merges, version, event.priority)
        self.state.rules_changed = True

    def record(self, obs: Observation) -> None:
        """Add the message to the history of its attribution subject (histories must be loaded)."""
        subject = obs.attribution
        if subject is None or subject in self.state.graph.erased:
            return
        history = self.state.histories.get(subject)
        if history is None:
            history = self.state.histories[subject] = History()
            self.state.without_history.discard(subject)
        history.record(obs.message_type, obs.timestamp, obs.source_id, obs.event_name, obs.traits)
        self.state.dirty_histories.add(subject)


def _storable(traits: Mapping[str, Any], event_id: str) -> Mapping[str, Any]:
    """The traits with what no read model can hold replaced (NUL, NaN, too deep: see `cdp.payload`).

    Ingest refuses such values at the door; a message accepted before, or appended by another producer, would
    otherwise fail the read model's write (PostgreSQL's json refuses NUL and Infinity) and be parked, losing the
    person's message from the profile.
    """
    if not traits:
        return traits
    clean, repaired = repaired_json(dict(traits), "traits")
    if not repaired:
        return traits
    log.warning("message_values_repaired", event_id=event_id, fields=repaired[:20], count=len(repaired))
    return cast(Mapping[str, Any], clean)
