"""The decider: from one observed message and the current graph, the decisions that resolve it.

Deterministic: the same graph, rules and message always give the same decisions with the same ids (derived
from the message's event id), so re-deciding after a crash appends nothing new.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.identity.domain import decisions as d
from services.identity.domain.graph import Graph
from services.identity.domain.identifiers import (
    ANONYMOUS_ID,
    PHONE_REGION,
    USER_ID,
    Hasher,
    Identity,
    normalise,
    raw_identifiers,
)
from services.identity.domain.rules import Rules

PROFILE_NAMESPACE = uuid.UUID("5b0f6c1e-7d1a-4c55-9a53-3a1f0e2b6d01")
DECISION_NAMESPACE = uuid.UUID("a3c2d6f4-2e4b-4f7e-8a36-0c9f5e7d1b02")


@dataclass(frozen=True, slots=True)
class Observation:
    """What identity resolution needs of one collected message (identifiers in priority order)."""

    event_id: str
    message_id: str
    message_type: str
    timestamp: datetime
    identities: tuple[Identity, ...]
    previous: tuple[Identity, Identity] | None = None
    """Alias only: previousId as an anonymous_id and as a user_id; the graph says which one it is."""
    source_id: str = ""
    event_name: str | None = None
    traits: Mapping[str, Any] = field(default_factory=dict)
    position: int | None = None
    """Where the message is in the log (None: unknown); refusals keep it so a split can re-decide them."""

    @property
    def attribution(self) -> str | None:
        """The subject whose history the message joins: its highest-priority usable identifier."""
        return self.identities[0].subject if self.identities else None


def identities_of(payload: Mapping[str, Any], rules: Rules, hasher: Hasher) -> tuple[Identity, ...]:
    """The usable identifiers of a message, deduplicated, blocked ones removed, highest priority first."""
    return identities_from(raw_identifiers(payload), rules, hasher)


def identities_from(raws: Iterable[tuple[str, Any]], rules: Rules, hasher: Hasher) -> tuple[Identity, ...]:
    """`identities_of` for identifiers already extracted (`raw_identifiers`)."""
    found: dict[str, Identity] = {}
    region: str | None = None
    for identifier_type, raw in raws:
        if identifier_type == PHONE_REGION:
            region = raw
            continue
        value = normalise(identifier_type, raw, region) if raw is not None else None
        if value is None or rules.is_blocked(identifier_type, value):
            continue
        identity = Identity(identifier_type, value, hasher(identifier_type, value))
        found.setdefault(identity.subject, identity)
    return tuple(sorted(found.values(), key=lambda i: rules.rank(i.type)))


def previous_of(payload: Mapping[str, Any], rules: Rules, hasher: Hasher) -> tuple[Identity, Identity] | None:
    """An alias message's previousId as both candidate types (None when absent or blocked)."""
    value = normalise(ANONYMOUS_ID, payload.get("previousId"))
    if value is None or rules.is_blocked(ANONYMOUS_ID, value):
        return None
    return (
        Identity(ANONYMOUS_ID, value, hasher(ANONYMOUS_ID, value)),
        Identity(USER_ID, value, hasher(USER_ID, value)),
    )


def decide(graph: Graph, rules: Rules, obs: Observation) -> list[d.Decision]:
    """Resolve one message against the graph, applying each decision to it; returns them in order."""
    ids = _candidates(graph, rules, obs)
    if not ids or _already_one_profile(graph, ids):
        return []
    kept, dropped = _fit(graph, rules, ids, obs.timestamp)
    out = Emitter(graph, obs.event_id)
    _join(graph, out, kept, obs)
    survivor = graph.profile_of(kept[0].subject)
    for identity, rule, other in dropped:
        if survivor is not None and f"{identity.subject}:{rule}" not in graph.nodes[survivor].refused:
            out.emit(
                d.Rejected(
                    out.next_id(),
                    survivor,
                    other or "",
                    rule,
                    identity.type,
                    identity.subject,
                    obs.message_id,
                    obs.timestamp,
                    obs.position,
                )
            )
    return out.decisions


class Emitter:
    """Numbers decisions deterministically (`seed:n`) and applies each to the graph as it is made."""

    def __init__(self, graph: Graph, seed: str) -> None:
        self.graph, self.seed, self.decisions = graph, seed, list[d.Decision]()

    def next_id(self) -> str:
        return str(uuid.uuid5(DECISION_NAMESPACE, f"{self.seed}:{len(self.decisions)}"))

    def emit(self, decision: d.Decision) -> None:
        self.graph.apply(decision)
        self.decisions.append(decision)


def _candidates(graph: Graph, rules: Rules, obs: Observation) -> list[Identity]:
    """The message's identifiers minus erased subjects, with an alias's previousId typed by the graph."""
    ids = list(obs.identities)
    if obs.previous is not None:
        as_anonymous, as_user = obs.previous
        known_as_user = as_user.subject in graph.links and as_anonymous.subject not in graph.links
        ids.append(as_user if known_as_user else as_anonymous)
        ids = sorted({i.subject: i for i in ids}.values(), key=lambda i: rules.rank(i.type))
    return [i for i in ids if i.subject not in graph.erased]


def _already_one_profile(graph: Graph, ids: list[Identity]) -> bool:
    """The common case: every identifier is known and on the same profile, so nothing to decide."""
    first = graph.profile_of(ids[0].subject)
    return first is not None and all(graph.profile_of(i.subject) == first for i in ids[1:])


def _fit(
    graph: Graph, rules: Rules, ids: list[Identity], at: datetime
) -> tuple[list[Identity], list[tuple[Identity, str, str | None]]]:
    """Drop the lowest-priority identifier while linking all of them would break a rule."""
    dropped: list[tuple[Identity, str, str | None]] = []
    while len(ids) > 1:
        rule = _violation(graph, rules, ids, at)
        if rule is None:
            break
        dropped.append((ids[-1], rule, graph.profile_of(ids[-1].subject)))
        ids = ids[:-1]
    return ids, dropped


def _profiles(graph: Graph, ids: Iterable[Identity]) -> list[str]:
    """Distinct profiles of the known identifiers, in the identifiers' priority order."""
    found = (graph.profile_of(i.subject) for i in ids)
    return list(dict.fromkeys(p for p in found if p is not None))


def _violation(graph: Graph, rules: Rules, ids: list[Identity], at: datetime) -> str | None:
    """The rule that linking all `ids` together would break, or None."""
    profiles = _profiles(graph, ids)
    if len(profiles) > 1:
        rule = _merge_violation(graph, rules, profiles)
        if rule is not None:
            return rule
    new = [i for i in ids if i.subject not in graph.links]
    types = {i.type for i in new} | (
        {graph.links[s].type for p in profiles for s in graph.nodes[p].subjects}
        if len(profiles) > 1
        else set()
    )
    for identifier_type in sorted(types, key=rules.rank):
        if _over_limit(graph, rules, profiles, new, identifier_type, at):
            return f"{d.VALUE_LIMIT}:{identifier_type}"
    return None


def _merge_violation(graph: Graph, rules: Rules, profiles: list[str]) -> str | None:
    """Rules about merging profiles: prevented relinks, different user ids, the merge cap."""
    live = set(profiles)
    if any(graph.nodes[p].no_relink & live for p in profiles):
        return d.PREVENTED_RELINK
    with_users = [users for p in profiles if (users := graph.user_ids(p))]
    if len(with_users) > 1 and len(set().union(*with_users)) > 1:
        return d.MERGE_PROTECTION
    total = sum(graph.merges(p) for p in profiles) + len(profiles) - 1
    if rules.max_merges is not None and total > rules.max_merges:
        return d.MAX_MERGES
    return None


def _over_limit(
    graph: Graph, rules: Rules, profiles: list[str], new: list[Identity], identifier_type: str, at: datetime
) -> bool:
    """Whether joining would put more values of the type on one profile than its limit allows."""
    limit, window = rules.limit(identifier_type)
    if limit is None:
        return False
    since = at - timedelta(seconds=window) if window else None
    counts = [graph.count_since(p, identifier_type, since) for p in profiles]
    total = sum(counts) + sum(1 for i in new if i.type == identifier_type)
    # A profile already over a limit tightened later is not punished: only growth beyond it is refused.
    return total > limit and total > max(counts, default=0)


def _join(graph: Graph, out: Emitter, ids: list[Identity], obs: Observation) -> None:
    """Create, merge and link so that every kept identifier ends on one profile."""
    rule = d.ALIAS if obs.message_type == "alias" else d.SHARED_MESSAGE
    profiles = _profiles(graph, ids)
    new = [i for i in ids if i.subject not in graph.links]
    if profiles:
        survivor = profiles[0]
        for merged in profiles[1:]:
            out.emit(d.Merged(out.next_id(), survivor, merged, rule, obs.message_id, obs.timestamp))
    else:
        survivor = str(uuid.uuid5(PROFILE_NAMESPACE, obs.event_id))
        first, new = new[0], new[1:]
        out.emit(_linked(out.next_id(), survivor, first, d.NEW_IDENTIFIER, True, obs))
    for identity in new:
        out.emit(_linked(out.next_id(), survivor, identity, rule, False, obs))


def _linked(
    decision_id: str, profile: str, identity: Identity, rule: str, creates: bool, obs: Observation
) -> d.Linked:
    return d.Linked(
        decision_id, profile, identity.type, identity.subject, rule, creates, obs.timestamp, obs.message_id
    )
