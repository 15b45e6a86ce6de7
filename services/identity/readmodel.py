"""The identity read model: graph, histories, identifier values, decisions and profile views in SQL.

The resolver keeps the live state in memory and writes only what a batch changed, in the same transaction
as its checkpoint; queries read these tables from the gRPC side.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    inspect,
    or_,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from cdp.sqlengine import chunks, rows_deleted
from services.identity.domain.decisions import Decision, Linked, Merged, Rejected, Split, decided_at
from services.identity.domain.graph import Graph, Link, Node
from services.identity.domain.history import EPOCH, History, fold, micros
from services.identity.domain.rules import Rules, TypeRule, default_rules

metadata = MetaData()

links = Table(
    "identity_links",
    metadata,
    Column("subject_id", String(32), primary_key=True),
    Column("type", String(80), nullable=False),
    Column("profile_id", String(36), nullable=False, index=True),
    Column("home", String(36), nullable=False),
    Column("linked_at", BigInteger),
)
values = Table(
    "identity_values",
    metadata,
    Column("subject_id", String(32), primary_key=True),
    Column("type", String(80), nullable=False),
    Column("value", String(1024), nullable=False),
)
profiles = Table(
    "identity_profiles",
    metadata,
    Column("profile_id", String(36), primary_key=True),
    Column("redirect", String(36), index=True),
    Column("merges", Integer, nullable=False),
    Column("no_relink", JSON, nullable=False),
    Column("refused", JSON, nullable=False),
    Column("traits", JSON, nullable=False),
    Column("stats", JSON, nullable=False),
    Column("create_time", BigInteger),
    Column("update_time", BigInteger, index=True),
)
histories = Table(
    "identity_histories",
    metadata,
    Column("subject_id", String(32), primary_key=True),
    Column("data", JSON, nullable=False),
)
erased = Table("identity_erased", metadata, Column("subject_id", String(32), primary_key=True))
decisions = Table(
    "identity_decisions",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("decision_id", String(36), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("rule", String(120), nullable=False),
    Column("profile_id", String(36), nullable=False, index=True),
    Column("other_profile_id", String(36), nullable=False, index=True),
    Column("identifiers", JSON, nullable=False),
    Column("cause_message_id", String(200), nullable=False),
    # Where a refused message is in the log, to re-decide it after a split (null for other decisions).
    Column("cause_position", BigInteger),
    Column("explanation", String(500), nullable=False),
    Column("manual", Boolean, nullable=False),
    Column("decide_time", BigInteger),
)
schema = Table("identity_schema", metadata, Column("fingerprint", String(64), primary_key=True))
"""The fingerprint of the tables below as this code defines them: a read model written by other code (another
table layout) is rebuilt from the log instead of being read (there are no migrations: the log is the source)."""
rules_table = Table(
    "identity_rules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("data", JSON, nullable=False),
)

HISTORY_CACHE = 100_000
"""Histories kept in memory between batches; the graph itself is always whole in memory."""
VALUE_CACHE = 200_000


@dataclass
class State:
    """Everything the resolver decides with, plus what changed since the last save.

    `histories` is complete when `persisted` is False (a replay in memory); otherwise it is a cache of the
    `identity_histories` table, filled on demand (`load_histories`) and trimmed after each save.
    """

    graph: Graph = field(default_factory=Graph)
    histories: dict[str, History] = field(default_factory=dict)
    rules: Rules = field(default_factory=default_rules)
    persisted: bool = False
    without_history: set[str] = field(default_factory=set)
    known_values: set[str] = field(default_factory=set)
    """Subjects whose clear value was written lately (a bounded hint; rewriting a value is harmless)."""
    new_values: dict[str, tuple[str, str]] = field(default_factory=dict)
    dirty_histories: set[str] = field(default_factory=set)
    new_decisions: list[dict[str, Any]] = field(default_factory=list)
    gone_profiles: set[str] = field(default_factory=set)
    next_seq: int = 0
    rules_changed: bool = False

    def remember_value(self, subject: str, identifier_type: str, value: str) -> None:
        """Keep an identifier's clear value for GetProfile (not for erased subjects: they are gone)."""
        if subject in self.graph.links or subject in self.graph.erased:
            return  # a linked subject's value is stored already
        if subject not in self.known_values:
            self.known_values.add(subject)
            self.new_values[subject] = (identifier_type, value)

    def record_decision(self, decision: Decision) -> None:
        """Queue the decision's row for GetMergeHistory."""
        self.new_decisions.append(decision_row(self.next_seq, decision))
        self.next_seq += 1

    def erase(self, subject: str) -> list[str]:
        """Forget a person: their profile and the profiles merged into it (their rows and every decision naming
        them, this batch's too), identifiers, values and histories; returns the subjects tombstoned."""
        graph = self.graph
        live = graph.profile_of(subject)
        retired = [p for p in graph.redirects if live is not None and graph.resolve(p) == live]
        profile, gone = graph.erase(subject)
        person = {*retired, *([profile] if profile is not None else [])}
        self.gone_profiles |= person
        if person:
            self.new_decisions = [
                row
                for row in self.new_decisions
                if row["profile_id"] not in person and row["other_profile_id"] not in person
            ]
        for member in gone:
            self.histories.pop(member, None)
            self.known_values.discard(member)
            self.new_values.pop(member, None)
            self.dirty_histories.add(member)
        return gone


def decision_row(seq: int, decision: Decision) -> dict[str, Any]:
    """The decisions-table row of a decision."""
    at = decided_at(decision)
    row: dict[str, Any] = {
        "seq": seq,
        "decision_id": decision.decision_id,
        "profile_id": decision.profile,
        "decide_time": micros(at) if at is not None else None,
        "manual": isinstance(decision, Split) and not decision.automatic,
        "explanation": "",
    }
    if isinstance(decision, Linked):
        kind, rule, other, ids = (
            "create" if decision.creates else "link",
            decision.rule,
            "",
            [[decision.type, decision.subject]],
        )
    elif isinstance(decision, Merged):
        kind, rule, other, ids = "merge", decision.rule, decision.merged, []
    elif isinstance(decision, Rejected):
        kind, rule, other, ids = "refuse", decision.rule, decision.other, [[decision.type, decision.subject]]
    else:
        kind, rule, other, ids = (
            "split",
            "manual_split",
            decision.new_profile,
            [[s] for s in decision.subjects],
        )
        row["explanation"] = decision.reason
    cause = "" if isinstance(decision, Split) else decision.cause
    position = decision.cause_position if isinstance(decision, Rejected) else None
    row.update(
        kind=kind,
        rule=rule,
        other_profile_id=other,
        identifiers=ids,
        cause_message_id=cause,
        cause_position=position,
    )
    return row


def schema_fingerprint() -> str:
    """A hash of every table's columns (names, types, nullability, keys) and index names."""
    layout = [
        (
            table.name,
            [(c.name, repr(c.type), c.nullable, c.primary_key) for c in table.columns],
            sorted(index.name or "" for index in table.indexes),
        )
        for table in sorted(metadata.tables.values(), key=lambda t: t.name)
    ]
    return hashlib.sha256(repr(layout).encode()).hexdigest()


def schema_outdated(connection: Connection) -> bool:
    """Whether the database holds identity tables of another layout (a fresh database is not outdated)."""
    tables = set(inspect(connection).get_table_names())
    if not tables & {t.name for t in metadata.tables.values() if t is not schema}:
        return False
    if schema.name not in tables:
        return True
    return connection.scalar(select(schema.c.fingerprint)) != schema_fingerprint()


def stamp_schema(connection: Connection) -> None:
    """Record that the tables have this code's layout."""
    connection.execute(delete(schema))
    connection.execute(insert(schema).values(fingerprint=schema_fingerprint()))


def refusal_rows(session: Session, profiles: Sequence[str]) -> list[dict[str, Any]]:
    """Refusal rows made by these profiles or naming them as the profile a message could not join."""
    found: list[dict[str, Any]] = []
    for chunk in chunks(profiles):
        statement = select(decisions).where(
            decisions.c.kind == "refuse",
            or_(decisions.c.profile_id.in_(chunk), decisions.c.other_profile_id.in_(chunk)),
        )
        found += [dict(row._mapping) for row in session.execute(statement.order_by(decisions.c.seq))]
    return found


def saved_decision_ids(session: Session, ids: Sequence[str]) -> set[str]:
    """Which of these decisions the read model holds."""
    found: set[str] = set()
    for chunk in chunks(ids):
        found.update(
            session.scalars(select(decisions.c.decision_id).where(decisions.c.decision_id.in_(chunk)))
        )
    return found


def refusal_from_row(row: Mapping[str, Any]) -> Rejected:
    """The refusal a decisions-table row records."""
    (identifier_type, subject), *_ = row["identifiers"]
    return Rejected(
        row["decision_id"],
        row["profile_id"],
        row["other_profile_id"],
        row["rule"],
        identifier_type,
        subject,
        row["cause_message_id"],
        from_micros(row["decide_time"]),
        row["cause_position"],
    )


def load_state(session: Session) -> State:
    """The resolver's state as last committed (histories are read on demand)."""
    state = State(persisted=True)
    graph = state.graph
    for row in session.execute(select(profiles)):
        profile = sys.intern(row.profile_id)  # one string per profile, shared by all its links
        if row.redirect is not None:
            graph.redirects[profile] = sys.intern(row.redirect)
            graph.retired_merges[profile] = row.merges
        else:
            graph.nodes[profile] = Node({}, row.merges, frozenset(row.no_relink), frozenset(row.refused))
    types: dict[str, str] = {}
    for row in session.execute(select(links)):
        kind = types.setdefault(row.type, row.type)
        home = sys.intern(row.home)
        graph.links[row.subject_id] = Link(kind, sys.intern(row.profile_id), home, from_micros(row.linked_at))
    for subject, link in graph.links.items():
        graph.nodes[link.profile].subjects[subject] = None
    _order_subjects(graph)
    graph.erased = set(session.scalars(select(erased.c.subject_id)))
    last = session.scalar(select(decisions.c.seq).order_by(decisions.c.seq.desc()).limit(1))
    state.next_seq = (last if last is not None else -1) + 1
    rules_row = session.execute(select(rules_table)).first()
    if rules_row is not None:
        state.rules = rules_from_row(rules_row.data, rules_row.version)
    return state


def _order_subjects(graph: Graph) -> None:
    """Subjects in link order (by decision time then id), as the live graph held them."""
    for node in graph.nodes.values():
        ordered = sorted(node.subjects, key=lambda s: (micros(graph.links[s].linked_at or EPOCH), s))
        node.subjects = dict.fromkeys(ordered)


Step = Callable[[Session], int | None]
"""One statement of a prepared save, its rows already encoded: it reads nothing of the live state. A delete
returns how many rows it deleted."""


@dataclass
class Pending:
    """What a batch changed, as statements ready to run: their rows are encoded when prepared."""

    steps: list[Step]


def save_state(session: Session, state: State) -> int:
    """Write what changed since the last save, then clear the change sets; how many rows it deleted."""
    deleted = write(session, prepare_save(session, state))
    trim_caches(state)
    return deleted


def prepare_save(session: Session, state: State) -> Pending:
    """Encode the changed rows and clear the change sets (`session` only reads missing histories)."""
    graph = state.graph
    subjects = graph.dirty_subjects | state.dirty_histories
    profile_ids = set(graph.dirty_profiles) | state.gone_profiles
    profile_ids |= {p for s in state.dirty_histories if (p := graph.profile_of(s)) is not None}
    load_histories(session, state, [s for p in profile_ids for s in graph.subjects_of(p)])
    steps: list[Step] = []
    steps += _replace(links, links.c.subject_id, graph.dirty_subjects, _link_rows(graph))
    steps += _replace(histories, histories.c.subject_id, state.dirty_histories, _history_rows(state))
    steps += _delete(values, values.c.subject_id, [s for s in subjects if s in graph.erased])
    new_values = state.new_values
    steps += _replace(values, values.c.subject_id, new_values, lambda s: _value_row(s, new_values[s]))
    tombstones = [s for s in subjects if s in graph.erased]
    steps += _replace(erased, erased.c.subject_id, tombstones, lambda s: {"subject_id": s})
    steps += _replace(profiles, profiles.c.profile_id, profile_ids, lambda p: profile_row(state, p))
    if state.gone_profiles:
        steps += _delete_decisions_of(state.gone_profiles)
    steps += _insert(decisions, state.new_decisions)
    if state.rules_changed:
        steps.append(_rules_step(state.rules))
    _clear(state)
    return Pending(steps)


def write(session: Session, pending: Pending) -> int:
    """Run a prepared save's statements in the session's transaction; how many rows they deleted."""
    deleted = 0
    for step in pending.steps:
        deleted += step(session) or 0
    return deleted


def _rules_step(rules: Rules) -> Step:
    row = {"id": 1, "version": rules.version, "data": rules_to_row(rules)}

    def step(session: Session) -> None:
        session.execute(delete(rules_table))
        session.execute(insert(rules_table).values(**row))

    return step


def _value_row(subject: str, typed: tuple[str, str]) -> dict[str, str]:
    return {"subject_id": subject, "type": typed[0], "value": typed[1]}


def load_histories(session: Session, state: State, subjects: Iterable[str]) -> None:
    """Bring the stored histories of these subjects into the cache (a no-op for an in-memory state)."""
    if not state.persisted:
        return
    missing = sorted({s for s in subjects if s not in state.histories and s not in state.without_history})
    for chunk in chunks(missing):
        found = {
            r.subject_id: r.data
            for r in session.execute(select(histories).where(histories.c.subject_id.in_(chunk)))
        }
        for subject in chunk:
            if subject in found:
                state.histories[subject] = history_from_json(found[subject])
            else:
                state.without_history.add(subject)


def trim_caches(state: State) -> None:
    """After a save (nothing dirty), forget cached histories and value hints beyond their bounds."""
    if state.persisted and len(state.histories) + len(state.without_history) > HISTORY_CACHE:
        state.histories.clear()
        state.without_history.clear()
    if len(state.known_values) > VALUE_CACHE:
        state.known_values.clear()


def _clear(state: State) -> None:
    state.graph.dirty_subjects.clear()
    state.graph.dirty_profiles.clear()
    state.new_values.clear()
    state.dirty_histories.clear()
    state.new_decisions.clear()
    state.gone_profiles.clear()
    state.rules_changed = False


def _link_rows(graph: Graph) -> Any:
    def row(subject: str) -> dict[str, Any] | None:
        link = graph.links.get(subject)
        if link is None:
            return None
        at = micros(link.linked_at) if link.linked_at is not None else None
        return {
            "subject_id": subject,
            "type": link.type,
            "profile_id": link.profile,
            "home": link.home,
            "linked_at": at,
        }

    return row


def _history_rows(state: State) -> Any:
    def row(subject: str) -> dict[str, Any] | None:
        history = state.histories.get(subject)
        return None if history is None else {"subject_id": subject, "data": history_to_json(history)}

    return row


def profile_row(state: State, profile: str) -> dict[str, Any] | None:
    """The profiles-table row of a live or merged-away profile (None once erased)."""
    graph = state.graph
    node = graph.nodes.get(profile)
    if node is None:
        target = graph.redirects.get(profile)
        if target is None:
            return None
        return {
            "profile_id": profile,
            "redirect": target,
            "merges": graph.retired_merges.get(profile, 0),
            "no_relink": [],
            "refused": [],
            "traits": {},
            "stats": {},
            "create_time": None,
            "update_time": None,
        }
    view = fold(state.histories[s] for s in node.subjects if s in state.histories)
    linked = [graph.links[s].linked_at for s in node.subjects]
    times = [t for t in (*linked, view.first_seen) if t is not None]
    stats = {
        "first_seen": micros(view.first_seen) if view.first_seen else None,
        "last_seen": micros(view.last_seen) if view.last_seen else None,
        "message_counts": view.counts,
        "event_counts": view.events,
        "sources": view.sources,
    }
    updated = [t for t in (*linked, view.last_seen) if t is not None]
    return {
        "profile_id": profile,
        "redirect": None,
        "merges": node.merges,
        "no_relink": sorted(node.no_relink),
        "refused": sorted(node.refused),
        "traits": view.traits,
        "stats": stats,
        "create_time": micros(min(times)) if times else None,
        "update_time": micros(max(updated)) if updated else None,
    }


def _replace(table: Table, key: Any, ids: Iterable[str], row: Any) -> list[Step]:
    """Write the rows of these keys: upsert those that exist, delete those that no longer do."""
    rows: list[dict[str, Any]] = []
    gone: list[str] = []
    for i in sorted(ids):
        found = row(i)
        if found is None:
            gone.append(i)
        else:
            rows.append(found)
    return [*_delete(table, key, gone), *_insert(table, rows, conflict=key.name)]


def _delete(table: Table, key: Any, ids: Sequence[str]) -> list[Step]:
    return [_execute(delete(table).where(key.in_(chunk))) for chunk in chunks(ids)]


def _execute(statement: Any) -> Step:
    def step(session: Session) -> int:
        return rows_deleted(session.execute(statement))

    return step


PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
"""Positional parameter markers of the DB-API drivers we run on (sqlite3, psycopg)."""


def _insert(table: Table, rows: list[dict[str, Any]], conflict: str | None = None) -> list[Step]:
    """One driver-level executemany of rows encoded now (JSON columns as text), without per-row Core work.

    `conflict`: the key column, to update an existing row instead (SQLite and PostgreSQL share the syntax).
    """
    if not rows:
        return []
    names = [column.name for column in table.columns]
    encoded = {column.name for column in table.columns if isinstance(column.type, JSON)}
    params = [
        tuple(json.dumps(row[name]) if name in encoded else row[name] for name in names) for row in rows
    ]

    def step(session: Session) -> None:
        connection = session.connection()
        marker = PLACEHOLDERS[connection.dialect.paramstyle]
        quote = connection.dialect.identifier_preparer.quote
        columns = ", ".join(quote(name) for name in names)
        markers = ", ".join([marker] * len(names))
        sql = f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({markers})"
        if conflict is not None:
            updates = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in names if n != conflict)
            sql += f" ON CONFLICT ({quote(conflict)}) " + (
                f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
            )
        connection.exec_driver_sql(sql, params)

    return [step]


def _delete_decisions_of(gone: set[str]) -> list[Step]:
    ids = sorted(gone)
    steps: list[Step] = []
    for chunk in chunks(ids):
        steps.append(_execute(delete(decisions).where(decisions.c.profile_id.in_(chunk))))
        steps.append(_execute(delete(decisions).where(decisions.c.other_profile_id.in_(chunk))))
        steps.append(_execute(delete(profiles).where(profiles.c.redirect.in_(chunk))))
    return steps


def history_to_json(history: History) -> dict[str, Any]:
    """A history as a JSON column."""
    return {
        "traits": history.traits,
        "first_seen": micros(history.first_seen) if history.first_seen else None,
        "last_seen": micros(history.last_seen) if history.last_seen else None,
        "counts": history.counts,
        "events": history.events,
        "sources": history.sources,
    }


def history_from_json(data: dict[str, Any]) -> History:
    """The inverse of `history_to_json`."""
    return History(
        traits=dict(data["traits"]),
        first_seen=from_micros(data["first_seen"]),
        last_seen=from_micros(data["last_seen"]),
        counts=dict(data["counts"]),
        events=dict(data["events"]),
        sources=dict(data["sources"]),
    )


def rules_to_row(rules: Rules) -> dict[str, Any]:
    """The rules as stored in the read model."""
    return {"rules": [rule.to_json() for rule in rules.rules], "max_merges": rules.max_merges}


def rules_from_row(data: dict[str, Any], version: int) -> Rules:
    """The inverse of `rules_to_row`."""
    return Rules(tuple(TypeRule.from_json(r) for r in data["rules"]), data.get("max_merges"), version)


def from_micros(value: int | None) -> datetime | None:
    """Microseconds since the epoch back to an aware UTC datetime."""
    return None if value is None else EPOCH + timedelta(microseconds=value)


def dumps(value: Any) -> str:
    """Compact, key-sorted JSON (for comparisons in tests and tools)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
