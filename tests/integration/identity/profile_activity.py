"""A consumer of the profile stream, as docs/events.md shows it: which profile each collected message is on now.

It follows identity's events alone (no graph, no rules): `MessagesAttributed` files each message under its
subject and profile; a merge moves the merged profile's messages to the survivor; a split moves its subjects'
messages to the new profile; a link gives a subject's profile-less messages their profile; an erasure forgets the
person. A real reactor runs it, so it is also what segments will build on.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Column, Engine, MetaData, String, Table, delete, func, select, update
from sqlalchemy.orm import Session

from cdp.eventlog import EventFilter, RecordedEvent
from cdp.events import (
    IdentifierLinked,
    MessagesAttributed,
    ProfilesMerged,
    ProfileSplit,
    SubjectErased,
    from_recorded,
)

metadata = MetaData()
messages = Table(
    "activity_messages",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("subject_id", String(64), nullable=False, index=True),
    Column("profile_id", String(36), nullable=False, index=True),
)


class ProfileActivity:
    """Messages per profile, kept current from the profile stream and identity's decisions."""

    name = "profile-activity"
    metadata = metadata
    filter = EventFilter(
        event_types=tuple(
            cls.type_name
            for cls in (MessagesAttributed, ProfilesMerged, ProfileSplit, IdentifierLinked, SubjectErased)
        )
    )

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> None:
        """Move messages between profiles as identity decided, in log order."""
        for recorded in events:
            event = from_recorded(recorded)
            if isinstance(event, MessagesAttributed):
                session.execute(
                    messages.insert(),
                    [
                        {"event_id": e.event_id, "subject_id": e.subject_id, "profile_id": e.profile_id}
                        for e in event.entries()
                    ],
                )
            elif isinstance(event, ProfilesMerged):
                session.execute(
                    update(messages)
                    .where(messages.c.profile_id == event.merged_profile_id)
                    .values(profile_id=event.profile_id)
                )
            elif isinstance(event, ProfileSplit):
                session.execute(
                    update(messages)
                    .where(messages.c.subject_id.in_(event.subject_ids))
                    .values(profile_id=event.new_profile_id)
                )
            elif isinstance(event, IdentifierLinked):
                session.execute(
                    update(messages)
                    .where(messages.c.subject_id == event.subject_id)
                    .values(profile_id=event.profile_id)
                )
            elif isinstance(event, SubjectErased):
                profiles = select(messages.c.profile_id).where(
                    messages.c.subject_id == event.subject_id, messages.c.profile_id != ""
                )
                person = set(session.scalars(profiles))
                session.execute(
                    delete(messages).where(
                        (messages.c.subject_id == event.subject_id) | messages.c.profile_id.in_(person)
                    )
                )


def counts(engine: Engine) -> dict[str, int]:
    """Messages per profile ("" collects those whose subject belongs to no profile)."""
    with engine.connect() as connection:
        query = select(messages.c.profile_id, func.count()).group_by(messages.c.profile_id)
        return {profile: int(n) for profile, n in connection.execute(query)}
