"""Operator splits: cut one identifier off a profile, or undo one link or merge decision."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from cdp.errors import FieldViolation, InvalidInput, NotFound
from services.identity.domain.decider import Observation, decide
from services.identity.domain.decisions import Decision, Rejected, Split
from services.identity.domain.graph import Graph
from services.identity.domain.rules import Rules


def split_identifier(
    graph: Graph,
    profile: str,
    subject: str,
    *,
    decision_id: str,
    new_profile: str,
    reason: str,
    prevent_relink: bool,
    at: datetime,
    undone: str = "",
) -> Split:
    """Move one identifier (and the history recorded under it) to a new profile."""
    live = _live(graph, profile)
    if graph.profile_of(subject) != live:
        raise InvalidInput(FieldViolation("identifier", "is not linked to this profile"))
    if len(graph.nodes[live].subjects) < 2:
        raise InvalidInput(FieldViolation("identifier", "is the profile's only identifier: nothing to split"))
    return Split(decision_id, live, new_profile, (subject,), reason, prevent_relink, undone, at)


def undo_merge(
    graph: Graph,
    profile: str,
    merged: str,
    *,
    decision_id: str,
    reason: str,
    prevent_relink: bool,
    at: datetime,
    undone: str,
) -> Split:
    """Give the merged-away profile back its identifiers (those linked while it was still apart)."""
    live = _live(graph, profile)
    if merged in graph.nodes or graph.resolve(merged) != live:
        raise InvalidInput(
            FieldViolation("decision_id", "this merge is already undone or not on this profile")
        )
    moved = tuple(s for s in graph.subjects_from(merged) if graph.profile_of(s) == live)
    if not moved or len(moved) == len(graph.nodes[live].subjects):
        raise InvalidInput(FieldViolation("decision_id", "undoing this merge would leave a profile empty"))
    return Split(decision_id, live, merged, moved, reason, prevent_relink, undone, at)


def _live(graph: Graph, profile: str) -> str:
    live = graph.resolve(profile)
    if live is None:
        raise NotFound("no such profile")
    return live


@dataclass(frozen=True)
class SplitRequest:
    """What an operator asked to cut off: an identifier (its subject), or a past decision to undo."""

    subject: str | None = None
    undo_id: str = ""
    undo_kind: str = ""
    """`create`, `link`, `merge` (anything else cannot be undone)."""
    undo_target: str = ""
    """The linked subject of a link, the merged-away profile of a merge."""


def plan_split(
    graph: Graph,
    profile: str,
    request: SplitRequest,
    *,
    decision_id: str,
    new_profile: str,
    reason: str,
    prevent_relink: bool,
    at: datetime,
) -> Split:
    """The Split decision an operator's request amounts to, against the graph as it is now."""
    if request.undo_kind == "merge":
        return undo_merge(
            graph,
            profile,
            request.undo_target,
            decision_id=decision_id,
            reason=reason,
            prevent_relink=prevent_relink,
            at=at,
            undone=request.undo_id,
        )
    if request.undo_id and request.undo_kind not in ("link", "create"):
        raise InvalidInput(FieldViolation("decision_id", "only a LINK or MERGE decision can be undone"))
    subject = request.undo_target if request.undo_id else request.subject
    if not subject:
        raise InvalidInput(FieldViolation("target", "needs an identifier or a decision_id"))
    return split_identifier(
        graph,
        profile,
        subject,
        decision_id=decision_id,
        new_profile=new_profile,
        reason=reason,
        prevent_relink=prevent_relink,
        at=at,
        undone=request.undo_id,
    )


def undoes_merge(graph: Graph, split: Split) -> bool:
    """Whether the split revives a merged-away profile (before it is applied).

    Such a split is not followed by a rebuild: its moved identifiers are a whole former profile, and resolving
    the messages again without them (or with them kept apart) does not give back the two profiles as they
    were; the undo itself does (identifiers linked since stay with the survivor).
    """
    return bool(split.undone) and split.new_profile in graph.redirects


def refusals_to_reconsider(graph: Graph, split: Split, refusals: Iterable[Rejected]) -> list[Rejected]:
    """The standing refusals the split may lift: made on the split profile, or refusing to join it.

    Called before the split is applied. "Standing" means the profile that refused still remembers the
    refusal (a refusal already re-decided by an earlier split is not standing unless it was refused again).
    """
    live = graph.resolve(split.profile)
    found: list[Rejected] = []
    for refusal in refusals:
        holder = graph.resolve(refusal.profile)
        if holder is None or live not in (holder, graph.resolve(refusal.other) if refusal.other else None):
            continue
        if f"{refusal.subject}:{refusal.rule}" in graph.nodes[holder].refused:
            found.append(refusal)
    return found


def redecide(graph: Graph, rules: Rules, split: Split, messages: Iterable[Observation]) -> list[Decision]:
    """After `split` is applied: decide the refused messages again, in log order, as if they had never
    carried the identifiers the split moved (so the split is not undone by the very messages it lifts).

    An identifier crowded out of a value limit by the identifier now split off joins the profile, as it would
    have had the link never been made. Decision ids derive from the split's id and the message's event id, so
    they differ from the message's first decisions and are the same whenever this split is re-decided.
    """
    decided: list[Decision] = []
    for obs in messages:
        decided += decide(graph, rules, without_moved(split, obs))
    return decided


def without_moved(split: Split, obs: Observation) -> Observation:
    """The message as if it had never carried the identifiers the split moved, for deciding it again after
    the split (its decisions get ids of their own, derived from the split's id and the message's event id)."""
    moved = set(split.subjects)
    previous = obs.previous
    if previous is not None and not moved.isdisjoint(p.subject for p in previous):
        previous = None
    return replace(
        obs,
        event_id=f"{split.decision_id}:{obs.event_id}",
        identities=tuple(i for i in obs.identities if i.subject not in moved),
        previous=previous,
    )
