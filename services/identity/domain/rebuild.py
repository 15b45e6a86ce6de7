"""Rebuilding the profiles a split affects from their messages, as if the split identifiers had never been
linked to them.

A split can lift the rule behind earlier refusals (a device's anonymous id filled a value limit, so a later
one was refused), and an identifier refused then may have been claimed by another profile since. Re-deciding
only the refused messages cannot take it back; re-resolving every message of the affected profiles, in log
order, does. So after an operator's split:

1. `component`: the affected profiles are the split profile and every profile its messages reach: a message
   naming a subject of the component brings in the profiles of all its identifiers, until nothing grows (the
   caller supplies the messages, reading more while the component grows);
2. `rebuild`: those messages are resolved again, in log order and without the split identifiers, in a
   scratch graph (same rules); then the real graph is moved to the scratch partition: each rebuilt group keeps
   the id of the affected profile whose highest-priority identifier it holds (else its scratch id),
   identifiers move by automatic `Split` decisions (a profile left empty redirects to where its own anchor
   went), identifiers that now fit are linked, and the refusals that still stand are recorded against the
   real profiles.

Every step is a decision, appended after the operator's split, so replaying the log reproduces the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from services.identity.domain import decisions as d
from services.identity.domain.decider import Emitter, Observation, decide
from services.identity.domain.graph import Graph
from services.identity.domain.rules import Rules
from services.identity.domain.splits import without_moved

REBUILT = "rebuilt after an operator's split"


def subjects_of(obs: Observation) -> set[str]:
    """Every subject a message names (an alias's previousId in both of its possible types)."""
    found = {i.subject for i in obs.identities}
    if obs.previous is not None:
        found.update(p.subject for p in obs.previous)
    return found


@dataclass(frozen=True)
class Component:
    """The profiles a split affects, the subjects their messages name, and those messages in log order."""

    profiles: frozenset[str]
    subjects: frozenset[str]
    messages: tuple[Observation, ...]


def component(
    graph: Graph, split: d.Split, refused: Iterable[str], messages: Sequence[Observation]
) -> Component:
    """Close the split profile and the subjects it refused over `messages` (before the split is applied).

    Complete only when `messages` holds every message naming a subject of the result.
    """
    live = graph.resolve(split.profile)
    assert live is not None, "the split profile must be live"
    profiles: set[str] = set()
    subjects: set[str] = set()

    def take(subject: str) -> None:
        """The subject, and with it its profile and all of that profile's subjects."""
        subjects.add(subject)
        profile = graph.profile_of(subject)
        if profile is not None and profile not in profiles:
            profiles.add(profile)
            subjects.update(graph.nodes[profile].subjects)

    for subject in [*graph.nodes[live].subjects, *refused]:
        take(subject)
    while True:
        chosen = [m for m in messages if not subjects_of(m).isdisjoint(subjects)]
        fresh = {s for m in chosen for s in subjects_of(m)} - subjects - graph.erased
        if not fresh:
            return Component(frozenset(profiles), frozenset(subjects), tuple(chosen))
        for subject in fresh:
            take(subject)


def rebuild(graph: Graph, rules: Rules, split: d.Split, part: Component) -> list[d.Decision]:
    """The decisions moving the component to its re-resolved partition; `graph` has the split applied and
    gets each decision applied as it is made (like `decide`)."""
    scratch, scratch_decisions = _resolve_again(graph, rules, split, part)
    targets, anchors = _targets(graph, rules, split, part, scratch)
    out = Emitter(graph, f"{split.decision_id}:rebuild")
    live = graph.resolve(split.profile)
    for source in sorted(part.profiles, key=lambda p: (p != live, p)):
        _move(out, split, source, scratch, targets, anchors.get(source))
    links = {x.subject: x for x in scratch_decisions if isinstance(x, d.Linked)}
    for group in sorted(scratch.nodes, key=lambda g: targets[g]):
        target = targets[group]
        for subject in scratch.nodes[group].subjects:
            if graph.profile_of(subject) is None:
                first = links[subject]
                creates = graph.resolve(target) != target
                out.emit(replace(first, decision_id=out.next_id(), profile=target, creates=creates))
    for refusal in scratch_decisions:
        if isinstance(refusal, d.Rejected):
            holder = graph.resolve(targets[_group(scratch, refusal.profile)])
            if holder is None or f"{refusal.subject}:{refusal.rule}" in graph.nodes[holder].refused:
                continue
            other = targets[_group(scratch, refusal.other)] if refusal.other else ""
            out.emit(replace(refusal, decision_id=out.next_id(), profile=holder, other=other))
    return out.decisions


def _resolve_again(
    graph: Graph, rules: Rules, split: d.Split, part: Component
) -> tuple[Graph, list[d.Decision]]:
    """The component's messages decided again in a scratch graph, without the identifiers the split moved."""
    scratch = Graph()
    scratch.erased = graph.erased  # read only: deciding never changes tombstones
    decided: list[d.Decision] = []
    for message in part.messages:
        decided += decide(scratch, rules, without_moved(split, message))
    return scratch, decided


def _group(scratch: Graph, profile: str) -> str:
    """The live scratch group a scratch profile id ended in."""
    live = scratch.resolve(profile)
    assert live is not None
    return live


def _targets(
    graph: Graph, rules: Rules, split: d.Split, part: Component, scratch: Graph
) -> tuple[dict[str, str], dict[str, str]]:
    """Scratch group → the real profile id it keeps, and each affected profile → its anchor's group.

    An affected profile's anchor is its highest-priority identifier the rebuild placed (earliest linked, then
    by id, among equals); the split profile chooses first, then the others by id.
    """
    live = graph.resolve(split.profile)
    targets: dict[str, str] = {}
    anchors: dict[str, str] = {}
    for profile in sorted(part.profiles, key=lambda p: (p != live, p)):
        node = graph.nodes.get(profile)
        placed = [s for s in node.subjects if s in scratch.links] if node is not None else []
        if not placed:
            continue
        anchor = min(placed, key=lambda s: (rules.rank(graph.links[s].type), _linked_seconds(graph, s), s))
        group = scratch.links[anchor].profile
        anchors[profile] = group
        targets.setdefault(group, profile)
    for group in scratch.nodes:
        targets.setdefault(group, group)
    return targets, anchors


def _linked_seconds(graph: Graph, subject: str) -> float:
    linked_at = graph.links[subject].linked_at
    return linked_at.timestamp() if linked_at is not None else 0.0


def _move(
    out: Emitter, split: d.Split, source: str, scratch: Graph, targets: dict[str, str], anchor: str | None
) -> None:
    """Move a profile's placed identifiers to their rebuilt profiles; its anchor's group last, so that a
    profile left empty redirects there. Identifiers no message names any more stay where they are."""
    node = out.graph.nodes.get(source)
    if node is None:
        return
    moves: dict[str, list[str]] = {}
    for subject in node.subjects:
        link = scratch.links.get(subject)
        if link is not None and targets[link.profile] != source:
            moves.setdefault(link.profile, []).append(subject)
    for group in sorted(moves, key=lambda g: (g == anchor, targets[g])):
        out.emit(
            d.Split(
                out.next_id(),
                source,
                targets[group],
                tuple(moves[group]),
                REBUILT,
                False,
                "",
                split.at,
                automatic=True,
            )
        )
