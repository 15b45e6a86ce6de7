"""Read-model queries behind GetProfile, ListProfiles, Resolve and GetMergeHistory (sync; run in a thread)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from cdp.sqlengine import chunks
from services.identity.domain.history import micros
from services.identity.readmodel import (
    State,
    decisions,
    from_micros,
    histories,
    links,
    profile_row,
    profiles,
    values,
)


@dataclass(frozen=True)
class IdentifierRecord:
    """An identifier on a profile, in the clear (this is what GetProfile answers)."""

    type: str
    value: str
    first_seen: datetime | None
    last_seen: datetime | None


@dataclass(frozen=True)
class ProfileRecord:
    """A profile as the read model holds it."""

    profile_id: str
    identifiers: list[IdentifierRecord]
    traits: dict[str, Any]
    stats: dict[str, Any]
    merged_profile_ids: list[str]
    create_time: datetime | None
    update_time: datetime | None


@dataclass(frozen=True)
class ProfileQuery:
    """ListProfiles filters (all that are set must hold)."""

    identifier_types: tuple[str, ...] = ()
    updated_start: datetime | None = None
    updated_end: datetime | None = None
    traits_equal: Mapping[str, Any] | None = None
    members: tuple[str, ...] | None = None
    """Only these profiles (an audience's members, asked of segments), sorted; None: no such condition."""


MEMBER_RUN = 2_000


def live_profile(session: Session, profile_id: str) -> str | None:
    """Follow merge redirects to the live profile; None when unknown or erased."""
    for _ in range(10_000):
        row = session.execute(select(profiles.c.redirect).where(profiles.c.profile_id == profile_id)).first()
        if row is None:
            return None
        if row.redirect is None:
            return profile_id
        profile_id = row.redirect
    return None


def profile_of_subject(session: Session, subject: str) -> str | None:
    """The profile an identifier's subject id is linked to."""
    return session.scalar(select(links.c.profile_id).where(links.c.subject_id == subject))


def merged_into(session: Session, profile_id: str) -> list[str]:
    """Every profile id that redirects (directly or not) to this one."""
    found: list[str] = []
    frontier = [profile_id]
    while frontier:
        rows = session.scalars(select(profiles.c.profile_id).where(profiles.c.redirect.in_(frontier))).all()
        found += rows
        frontier = list(rows)
    return sorted(found)


def load_profile(session: Session, profile_id: str) -> ProfileRecord | None:
    """One live profile with its identifiers in the clear."""
    row = session.execute(select(profiles).where(profiles.c.profile_id == profile_id)).first()
    if row is None or row.redirect is not None:
        return None
    link_rows = session.execute(select(links).where(links.c.profile_id == profile_id)).all()
    subjects = [r.subject_id for r in link_rows]
    clear = dict(
        (r.subject_id, r.value)
        for r in session.execute(select(values).where(values.c.subject_id.in_(subjects)))
    )
    seen = {
        r.subject_id: r.data.get("last_seen")
        for r in session.execute(select(histories).where(histories.c.subject_id.in_(subjects)))
    }
    ids = [
        _identifier(r.type, clear.get(r.subject_id, ""), r.linked_at, seen.get(r.subject_id))
        for r in link_rows
    ]
    return _record(dict(row._mapping), ids, merged_into(session, profile_id))


def list_profiles(
    session: Session, query: ProfileQuery, after: str, limit: int
) -> tuple[list[ProfileRecord], bool]:
    """Up to `limit` live profiles after `after` (by id) matching the query; True when more may follow."""
    found: list[ProfileRecord] = []
    while True:
        ids = session.scalars(_candidates(query, after).limit(limit * 2)).all()
        for profile_id in ids:
            record = load_profile(session, profile_id)
            if record is not None and _traits_match(record.traits, query.traits_equal):
                found.append(record)
                if len(found) == limit:
                    more = session.scalar(_candidates(query, profile_id).limit(1)) is not None
                    return found, more
        if len(ids) < limit * 2:
            return found, False
        after = ids[-1]


def _candidates(query: ProfileQuery, after: str) -> Select[Any]:
    statement = (
        select(profiles.c.profile_id)
        .where(profiles.c.redirect.is_(None), profiles.c.profile_id > after)
        .order_by(profiles.c.profile_id)
    )
    if query.members is not None:
        # The next members by id: every page of candidates (at most twice 1,000) comes from this run of them.
        start = bisect.bisect_right(query.members, after)
        statement = statement.where(profiles.c.profile_id.in_(query.members[start : start + MEMBER_RUN]))
    if query.identifier_types:
        typed = select(links.c.profile_id).where(links.c.type.in_(query.identifier_types))
        statement = statement.where(profiles.c.profile_id.in_(typed))
    if query.updated_start is not None:
        statement = statement.where(profiles.c.update_time >= micros(query.updated_start))
    if query.updated_end is not None:
        statement = statement.where(profiles.c.update_time < micros(query.updated_end))
    return statement


def _traits_match(traits: Mapping[str, Any], wanted: Mapping[str, Any] | None) -> bool:
    return not wanted or all(key in traits and traits[key] == value for key, value in wanted.items())


def decision_rows(
    session: Session,
    profile_ids: Sequence[str],
    start: datetime | None,
    end: datetime | None,
    after: int,
    limit: int,
) -> list[dict[str, Any]]:
    """Decisions about these profiles (as survivor or other side), oldest first, after seq `after`."""
    table = decisions
    statement = (
        select(table)
        .where((table.c.profile_id.in_(profile_ids)) | (table.c.other_profile_id.in_(profile_ids)))
        .where(table.c.seq > after)
        .order_by(table.c.seq)
        .limit(limit)
    )
    if start is not None:
        statement = statement.where(table.c.decide_time >= micros(start))
    if end is not None:
        statement = statement.where(table.c.decide_time < micros(end))
    return [dict(row._mapping) for row in session.execute(statement)]


def decision_by_id(session: Session, decision_id: str) -> dict[str, Any] | None:
    """One decision row."""
    row = session.execute(select(decisions).where(decisions.c.decision_id == decision_id)).first()
    return None if row is None else dict(row._mapping)


def record_from_state(state: State, profile_id: str, clear: Callable[[str], str]) -> ProfileRecord | None:
    """A profile built from an in-memory state (GetProfile as of a past time)."""
    row = profile_row(state, profile_id)
    if row is None or row["redirect"] is not None:
        return None
    graph = state.graph
    ids = []
    for subject in graph.subjects_of(profile_id):
        link, history = graph.links[subject], state.histories.get(subject)
        last = micros(history.last_seen) if history and history.last_seen else None
        linked = micros(link.linked_at) if link.linked_at else None
        ids.append(_identifier(link.type, clear(subject), linked, last))
    return _record(row, ids, sorted(graph.merged_into(profile_id)))


def _identifier(identifier_type: str, value: str, linked: int | None, last: int | None) -> IdentifierRecord:
    first = from_micros(linked)
    last_seen = from_micros(last if last is not None and (linked is None or last >= linked) else linked)
    return IdentifierRecord(identifier_type, value, first, last_seen)


def _record(row: Mapping[str, Any], ids: list[IdentifierRecord], merged: list[str]) -> ProfileRecord:
    return ProfileRecord(
        profile_id=row["profile_id"],
        identifiers=sorted(ids, key=lambda i: (i.type, i.value)),
        traits=dict(row["traits"]),
        stats=dict(row["stats"]),
        merged_profile_ids=merged,
        create_time=from_micros(row["create_time"]),
        update_time=from_micros(row["update_time"]),
    )


def clear_values(session: Session, subjects: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Subject id → (type, clear value) for those still known."""
    wanted = sorted(set(subjects))
    found: dict[str, tuple[str, str]] = {}
    for chunk in chunks(wanted):
        for row in session.execute(select(values).where(values.c.subject_id.in_(chunk))):
            found[row.subject_id] = (row.type, row.value)
    return found
