"""The segments read model's tables: profiles as conditions see them, definitions, memberships.

Documents (traits, event properties, computed values) are kept twice: as JSON (what the Python evaluator and
the replies read) and as typed leaves (`services.segments.domain.values`: what compiled SQL compares). Times
are µs since the epoch (BigInteger), so window arithmetic is the same integer arithmetic in every engine.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Strings compare by code point everywhere, as Python compares them: PostgreSQL's default collation would not.
Exact = String().with_variant(String(collation="C"), "postgresql")
ExactText = Text().with_variant(Text(collation="C"), "postgresql")


def _leaf_columns() -> list[Column[object]]:
    return [
        Column("path", Exact, nullable=False),
        Column("kind", String(8), nullable=False),
        Column("num", Float),
        Column("text", ExactText),
        Column("key", ExactText),
        Column("time", BigInteger),
        Column("item", Boolean, nullable=False),
    ]


profiles = Table(
    "segments_profiles",
    metadata,
    Column("profile_id", String(36), primary_key=True),
    Column("traits", JSON, nullable=False),
    # The next instant time alone may change one of its memberships or computed traits (a window passing).
    Column("due_at", BigInteger, index=True),
    Column("update_time", BigInteger),
)

subjects = Table(
    "segments_subjects",
    metadata,
    Column("subject_id", String(64), primary_key=True),
    Column("profile_id", String(36), index=True),
    Column("identifier_type", String(80)),
)
"""Each subject (identifier's keyed hash) and the profile holding it, as the profile stream says."""

events = Table(
    "segments_events",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("subject_id", String(64), nullable=False, index=True),
    Column("profile_id", String(36)),
    Column("message_type", String(16), nullable=False),
    Column("name", Exact),
    Column("time", BigInteger, nullable=False),
    Column("properties", JSON, nullable=False),
    Column("traits", JSON),  # identify only: the traits it set (folded into the profile's)
    Index("segments_events_by_profile", "profile_id", "message_type", "name", "time"),
)
"""Collected messages, decrypted; `profile_id` is null until the profile stream attributes the message."""

event_leaves = Table(
    "segments_event_leaves",
    metadata,
    Column("position", BigInteger, nullable=False),
    *_leaf_columns(),
    Index("segments_event_leaves_by_event", "position", "path"),
)

trait_leaves = Table(
    "segments_trait_leaves",
    metadata,
    Column("profile_id", String(36), nullable=False),
    *_leaf_columns(),
    # Compiled conditions look a profile's leaves up by path (`sqlcompile`: correlated EXISTS per profile). No
    # index leads with the path: without statistics SQLite would pick it for those lookups and scan every
    # profile's leaves at that path once per profile.
    Index("segments_trait_leaves_by_profile", "profile_id", "path"),
)

computed = Table(
    "segments_computed",
    metadata,
    Column("profile_id", String(36), primary_key=True),
    Column("trait_id", String(80), primary_key=True),
    Column("value", JSON),
    Column("update_time", BigInteger),
)

computed_leaves = Table(
    "segments_computed_leaves",
    metadata,
    Column("profile_id", String(36), nullable=False),
    Column("trait_id", String(80), nullable=False),
    *_leaf_columns(),
    Index("segments_computed_leaves_by_profile", "profile_id", "trait_id", "path"),  # as trait leaves
)

consent = Table(
    "segments_consent",
    metadata,
    Column("subject_id", String(64), primary_key=True),
    Column("purpose", String(80), primary_key=True),
    Column("granted", Boolean, nullable=False),
    Column("position", BigInteger, nullable=False),
)
"""Each subject's latest decision per purpose (from `ConsentChanged`)."""

profile_consent = Table(
    "segments_profile_consent",
    metadata,
    Column("profile_id", String(36), primary_key=True),
    Column("purpose", String(80), primary_key=True),
    Column("granted", Boolean, nullable=False),
)
"""A profile's consent per purpose: the latest decision among its subjects."""

audiences = Table(
    "segments_audiences",
    metadata,
    Column("audience_id", String(80), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("expression", Text, nullable=False),
    Column("definition", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("create_time", BigInteger, nullable=False),
    Column("update_time", BigInteger, nullable=False),
    Column("created_by", String(200), nullable=False),
)

traits = Table(
    "segments_traits",
    metadata,
    Column("trait_id", String(80), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("expression", Text, nullable=False),
    Column("definition", JSON, nullable=False),
    Column("version", Integer, nullable=False),
    Column("update_time", BigInteger, nullable=False),
)

bands = Table(
    "segments_bands",
    metadata,
    Column("attribute", String(200), primary_key=True),
    Column("bands", JSON, nullable=False),
)
"""The attribute catalog's bands (`AttributeDefined.bands`) by trait name."""

memberships = Table(
    "segments_memberships",
    metadata,
    Column("audience_id", String(80), primary_key=True),
    Column("profile_id", String(36), primary_key=True, index=True),
    Column("member", Boolean, nullable=False),
    Column("change_time", BigInteger, nullable=False),
    # How many times the membership changed: numbers the next change's event id.
    Column("changes", Integer, nullable=False),
    # The truth of each top-level condition at the last evaluation: what the next change names as changed.
    Column("parts", JSON, nullable=False),
    Index("segments_memberships_members", "audience_id", "member", "profile_id"),
)

changes = Table(
    "segments_changes",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("audience_id", String(80), nullable=False),
    Column("profile_id", String(36), nullable=False),
    Column("entered", Boolean, nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("reason", String(16), nullable=False),
    Column("changed", JSON, nullable=False),
    Index("segments_changes_by_audience", "audience_id", "time"),
    Index("segments_changes_by_profile", "profile_id"),
)
"""Every `MembershipChanged` in the log, by global position: history (stats, as-of members, watch)."""
