"""Reading profiles' facts from the read model for the Python evaluator, and writing what it computed back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, insert, null, or_, select, update
from sqlalchemy.orm import Session

from cdp.sqlengine import chunks, rows_deleted
from services.segments import tables as t
from services.segments.domain.conditions import EventNeeds
from services.segments.domain.evaluate import EventFact, ProfileFacts
from services.segments.domain.values import EMPTY, Doc, flatten
from services.segments.loading import leaf_rows


def load_facts(
    session: Session, profile_ids: Sequence[str], needs: EventNeeds | None = None
) -> dict[str, ProfileFacts]:
    """Everything conditions may ask of these profiles (profiles without a row get empty facts); of their
    messages only those `needs` names (None: all of them, with their properties)."""
    found = {profile_id: ProfileFacts(profile_id) for profile_id in profile_ids}
    events: dict[str, list[EventFact]] = {profile_id: [] for profile_id in profile_ids}
    consent: dict[str, dict[str, bool]] = {profile_id: {} for profile_id in profile_ids}
    computed: dict[str, dict[str, Doc]] = {profile_id: {} for profile_id in profile_ids}
    types: dict[str, set[str]] = {profile_id: set() for profile_id in profile_ids}
    for part in chunks(list(profile_ids)):
        for profile_id, traits in session.execute(
            select(t.profiles.c.profile_id, t.profiles.c.traits).where(t.profiles.c.profile_id.in_(part))
        ):
            found[profile_id].traits = Doc.of(traits or {})
        if needs is None or needs.kinds:
            for profile_id, position, time, message_type, name, properties in session.execute(
                _events_query(part, needs)
            ):
                doc = Doc.of(properties) if properties else EMPTY
                events[profile_id].append(EventFact(position, time, message_type, name, doc))
        for profile_id, purpose, granted in session.execute(
            select(t.profile_consent).where(t.profile_consent.c.profile_id.in_(part))
        ):
            consent[profile_id][purpose] = bool(granted)
        for profile_id, trait_id, value in session.execute(
            select(t.computed.c.profile_id, t.computed.c.trait_id, t.computed.c.value).where(
                t.computed.c.profile_id.in_(part)
            )
        ):
            computed[profile_id][trait_id] = Doc.of(value)
        for profile_id, identifier_type in session.execute(
            select(t.subjects.c.profile_id, t.subjects.c.identifier_type).where(
                t.subjects.c.profile_id.in_(part)
            )
        ):
            if identifier_type:
                types[profile_id].add(identifier_type)
    for profile_id, facts in found.items():
        facts.events = events[profile_id]
        facts.consent = consent[profile_id]
        facts.computed = computed[profile_id]
        facts.identifier_types = frozenset(types[profile_id])
    return found


def _events_query(profile_ids: Sequence[str], needs: EventNeeds | None) -> Select[Any]:
    """The profiles' messages a definition can look at, in (time, position) order."""
    events = t.events.c
    properties = events.properties if needs is None or needs.properties else null()
    query = select(
        events.profile_id, events.position, events.time, events.message_type, events.name, properties
    )
    query = query.where(events.profile_id.in_(profile_ids))
    if needs is not None:
        query = query.where(
            or_(
                *(
                    events.message_type == kind
                    if name is None
                    else and_(events.message_type == kind, events.name == name)
                    for kind, name in sorted(needs.kinds, key=str)
                )
            )
        )
    return query.order_by(events.time, events.position)


def fold_traits(session: Session, profile_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each profile's traits: each key's value from its latest identify by event time (ties: later in the log)."""
    traits: dict[str, dict[str, Any]] = {profile_id: {} for profile_id in profile_ids}
    for part in chunks(list(profile_ids)):
        rows = session.execute(
            select(t.events.c.profile_id, t.events.c.traits)
            .where(t.events.c.profile_id.in_(part), t.events.c.message_type == "identify")
            .order_by(t.events.c.time, t.events.c.position)
        )
        for profile_id, set_traits in rows:
            if isinstance(set_traits, Mapping):
                traits[profile_id].update(set_traits)
    return traits


def write_traits(session: Session, traits: Mapping[str, Mapping[str, Any]], now: int) -> None:
    """Store profiles' folded traits, as JSON and as leaves (profiles without a row get one)."""
    for part in chunks(sorted(traits)):
        existing = set(
            session.execute(
                select(t.profiles.c.profile_id).where(t.profiles.c.profile_id.in_(part))
            ).scalars()
        )
        rows = [{"b_profile": p, "b_traits": dict(traits[p]), "b_time": now} for p in part if p in existing]
        if rows:
            session.execute(
                update(t.profiles)
                .where(t.profiles.c.profile_id == bindparam("b_profile"))
                .values(traits=bindparam("b_traits"), update_time=bindparam("b_time")),
                rows,
            )
        new = [
            {"profile_id": p, "traits": dict(traits[p]), "update_time": now}
            for p in part
            if p not in existing
        ]
        if new:
            session.execute(insert(t.profiles), new)
        if existing:
            session.execute(delete(t.trait_leaves).where(t.trait_leaves.c.profile_id.in_(sorted(existing))))
        leaves = [row for p in part for row in leaf_rows(flatten(dict(traits[p])), profile_id=p)]
        if leaves:
            session.execute(insert(t.trait_leaves), leaves)


def add_missing_profiles(session: Session, profile_ids: Sequence[str], now: int) -> None:
    """A row, without traits, for each of these profiles the read model does not hold yet."""
    for part in chunks(sorted(profile_ids)):
        existing = set(
            session.execute(
                select(t.profiles.c.profile_id).where(t.profiles.c.profile_id.in_(part))
            ).scalars()
        )
        new = [{"profile_id": p, "traits": {}, "update_time": now} for p in part if p not in existing]
        if new:
            session.execute(insert(t.profiles), new)


def write_computed(session: Session, profile_id: str, trait_id: str, value: Any, now: int) -> None:
    """Store a computed trait's value for a profile (None: no value)."""
    owner = (t.computed_leaves.c.profile_id == profile_id) & (t.computed_leaves.c.trait_id == trait_id)
    session.execute(delete(t.computed_leaves).where(owner))
    session.execute(
        delete(t.computed).where(t.computed.c.profile_id == profile_id, t.computed.c.trait_id == trait_id)
    )
    if value is None:
        return
    session.execute(
        insert(t.computed).values(profile_id=profile_id, trait_id=trait_id, value=value, update_time=now)
    )
    rows = leaf_rows(flatten(value), profile_id=profile_id, trait_id=trait_id)
    if rows:
        session.execute(insert(t.computed_leaves), rows)


def write_consent(session: Session, profile_ids: Sequence[str]) -> None:
    """Profiles' consent per purpose: their subjects' latest decisions (the latest in the log wins)."""
    for part in chunks(sorted(profile_ids)):
        session.execute(delete(t.profile_consent).where(t.profile_consent.c.profile_id.in_(part)))
        latest: dict[tuple[str, str], tuple[int, bool]] = {}
        rows = session.execute(
            select(t.subjects.c.profile_id, t.consent.c.purpose, t.consent.c.granted, t.consent.c.position)
            .join(t.subjects, t.subjects.c.subject_id == t.consent.c.subject_id)
            .where(t.subjects.c.profile_id.in_(part))
        )
        for profile_id, purpose, granted, position in rows:
            key = (profile_id, purpose)
            if key not in latest or position > latest[key][0]:
                latest[key] = (position, bool(granted))
        if latest:
            session.execute(
                insert(t.profile_consent),
                [
                    {"profile_id": p, "purpose": purpose, "granted": g}
                    for (p, purpose), (_, g) in latest.items()
                ],
            )


def purge_profile(session: Session, profile_id: str) -> int:
    """Delete everything the read model holds of a profile but its memberships (its events stay with the
    subjects that still hold them: call after moving those); how many rows went."""
    deleted = 0
    for table in (t.trait_leaves, t.computed_leaves, t.computed, t.profile_consent, t.profiles):
        deleted += rows_deleted(session.execute(delete(table).where(table.c.profile_id == profile_id)))
    return deleted
