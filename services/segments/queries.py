"""Reads of the segments read model for the gRPC side (never taking SQLite's write lock)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, case, func, select
from sqlalchemy.engine import Connection

from cdp.sqlengine import read_only
from services.segments import sqlcompile
from services.segments import tables as t
from services.segments.domain.conditions import Condition
from services.segments.domain.evaluate import Definitions


@dataclass(frozen=True)
class AudienceRecord:
    """An audience as stored."""

    audience_id: str
    display_name: str
    description: str
    expression: str
    definition: dict[str, Any]
    state: str
    version: int
    size: int
    create_time: int
    update_time: int
    created_by: str


@dataclass(frozen=True)
class TraitRecord:
    """A computed trait as stored."""

    trait_id: str
    display_name: str
    description: str
    expression: str
    definition: dict[str, Any]
    version: int
    update_time: int


@dataclass(frozen=True)
class Member:
    """One member and when it entered."""

    profile_id: str
    enter_time: int


@dataclass(frozen=True)
class Membership:
    """Whether a profile is in one audience, and since when."""

    audience_id: str
    member: bool
    change_time: int | None


@dataclass(frozen=True)
class Change:
    """One membership change, as a watcher is told it."""

    audience_id: str
    profile_id: str
    entered: bool
    time: int
    reason: str
    changed: tuple[str, ...]


class Queries:
    """The read side: audiences, traits, members, statistics, previews."""

    def __init__(self, engine: Engine) -> None:
        self.engine = read_only(engine)

    def audience(self, audience_id: str) -> AudienceRecord | None:
        """One audience, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(t.audiences).where(t.audiences.c.audience_id == audience_id)
            ).first()
        return AudienceRecord(**row._mapping) if row is not None else None

    def audiences(self, after: str, size: int, include_archived: bool) -> list[AudienceRecord]:
        """A page of audiences by id, after `after`."""
        query = select(t.audiences).where(t.audiences.c.audience_id > after)
        if not include_archived:
            query = query.where(t.audiences.c.state != "archived")
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(t.audiences.c.audience_id).limit(size))
            return [AudienceRecord(**row._mapping) for row in rows]

    def trait(self, trait_id: str) -> TraitRecord | None:
        """One computed trait, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(select(t.traits).where(t.traits.c.trait_id == trait_id)).first()
        return TraitRecord(**row._mapping) if row is not None else None

    def traits(self, after: str, size: int) -> list[TraitRecord]:
        """A page of computed traits by id."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(t.traits).where(t.traits.c.trait_id > after).order_by(t.traits.c.trait_id).limit(size)
            )
            return [TraitRecord(**row._mapping) for row in rows]

    def bands(self, attribute: str) -> list[dict[str, Any]]:
        """The catalog's bands of an attribute (trait name)."""
        with self.engine.connect() as connection:
            found = connection.execute(
                select(t.bands.c.bands).where(t.bands.c.attribute == attribute)
            ).scalar()
        return list(found or [])

    def preview(
        self, condition: Condition, now: int, audiences: Definitions, sample: int
    ) -> tuple[int, list[str]]:
        """How many profiles match now, and the first `sample` of them by id."""
        members = sqlcompile.members(condition, now, audiences).subquery()
        with self.engine.connect() as connection:
            size = connection.execute(select(func.count()).select_from(members)).scalar_one()
            ids = (
                list(
                    connection.execute(
                        select(members.c.profile_id).order_by(members.c.profile_id).limit(sample)
                    ).scalars()
                )
                if sample
                else []
            )
        return size, ids

    def members(self, audience_id: str, chunk: int) -> Iterator[list[Member]]:
        """The current members by profile id, `chunk` at a time (each chunk its own short read)."""
        after = ""
        while True:
            with self.engine.connect() as connection:
                rows = connection.execute(
                    select(t.memberships.c.profile_id, t.memberships.c.change_time)
                    .where(
                        t.memberships.c.audience_id == audience_id,
                        t.memberships.c.member.is_(True),
                        t.memberships.c.profile_id > after,
                    )
                    .order_by(t.memberships.c.profile_id)
                    .limit(chunk)
                ).all()
            if not rows:
                return
            yield [Member(profile_id, at) for profile_id, at in rows]
            after = rows[-1][0]

    def members_as_of(self, audience_id: str, at: int, chunk: int) -> Iterator[list[Member]]:
        """The members at instant `at`: each profile's last change up to then was an entry."""
        latest = (
            select(t.changes.c.profile_id, func.max(t.changes.c.position).label("position"))
            .where(t.changes.c.audience_id == audience_id, t.changes.c.time <= at)
            .group_by(t.changes.c.profile_id)
            .subquery()
        )
        query = (
            select(t.changes.c.profile_id, t.changes.c.time)
            .join(latest, t.changes.c.position == latest.c.position)
            .where(t.changes.c.entered.is_(True))
            .order_by(t.changes.c.profile_id)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        for start in range(0, len(rows), chunk):
            yield [Member(profile_id, time) for profile_id, time in rows[start : start + chunk]]

    def memberships(self, profile_id: str, audience_ids: Sequence[str]) -> dict[str, Membership]:
        """The profile's membership rows of these audiences (absent, or no change time: it never entered)."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(
                    t.memberships.c.audience_id,
                    t.memberships.c.member,
                    t.memberships.c.change_time,
                    t.memberships.c.changes,
                ).where(
                    t.memberships.c.profile_id == profile_id,
                    t.memberships.c.audience_id.in_(list(audience_ids)),
                )
            )
            # A row that never changed only remembers which conditions hold: the profile never entered.
            return {
                a: Membership(a, bool(member), at if changes else None) for a, member, at, changes in rows
            }

    def knows_profile(self, profile_id: str) -> bool:
        """Whether the read model holds this profile."""
        with self.engine.connect() as connection:
            return (
                connection.execute(
                    select(t.profiles.c.profile_id).where(t.profiles.c.profile_id == profile_id)
                ).first()
                is not None
            )

    def stats(
        self, audience_id: str, start: int, end: int, interval: int
    ) -> tuple[int, int, list[tuple[int, int]]]:
        """Entries and exits within [start, end), and the size at the end of each interval."""
        with self.engine.connect() as connection:
            entered, exited = _counts(connection, audience_id, start, end)
            points: list[tuple[int, int]] = []
            at = start + interval
            while at < end + interval and len(points) < 1000:
                moment = min(at, end)
                points.append((moment, _size_at(connection, audience_id, moment)))
                at += interval
        return entered, exited, points


def _counts(connection: Connection, audience_id: str, start: int, end: int) -> tuple[int, int]:
    row = connection.execute(
        select(
            func.coalesce(func.sum(case((t.changes.c.entered.is_(True), 1), else_=0)), 0),
            func.coalesce(func.sum(case((t.changes.c.entered.is_(True), 0), else_=1)), 0),
        ).where(
            and_(t.changes.c.audience_id == audience_id, t.changes.c.time >= start, t.changes.c.time < end)
        )
    ).one()
    return int(row[0]), int(row[1])


def _size_at(connection: Connection, audience_id: str, at: int) -> int:
    found = connection.execute(
        select(func.coalesce(func.sum(case((t.changes.c.entered.is_(True), 1), else_=-1)), 0)).where(
            t.changes.c.audience_id == audience_id, t.changes.c.time <= at
        )
    ).scalar_one()
    return int(found)
