"""The identity graph: which profile each subject id belongs to, changed only by applying decisions.

Applying is idempotent (re-applying a decision already reflected changes nothing), so a replay of the
decision events after a crash between append and checkpoint cannot corrupt the graph.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from services.identity.domain.decisions import Decision, Linked, Merged, Rejected, Split
from services.identity.domain.identifiers import USER_ID


@dataclass(slots=True)
class Link:
    """A subject's place in the graph: its current profile, and the profile it was first linked into."""

    type: str
    profile: str
    home: str
    linked_at: datetime | None


@dataclass(slots=True)
class Node:
    """A live profile: its subjects (insertion-ordered), merges folded into it, rule memory."""

    subjects: dict[str, None] = field(default_factory=dict)
    merges: int = 0
    # Both are empty for nearly every profile: a shared empty frozenset, replaced on first write, saves memory.
    no_relink: frozenset[str] = frozenset()
    refused: frozenset[str] = frozenset()
    """`subject:rule` pairs already refused, so a repeated message does not repeat its refusal."""


class Graph:
    """Subjects, profiles, redirects of merged-away profiles, tombstones of erased subjects."""

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self.nodes: dict[str, Node] = {}
        self.redirects: dict[str, str] = {}
        self.retired_merges: dict[str, int] = {}
        self.erased: set[str] = set()
        self.dirty_subjects: set[str] = set()
        self.dirty_profiles: set[str] = set()

    def profile_of(self, subject: str) -> str | None:
        """The live profile holding the subject, if any."""
        link = self.links.get(subject)
        return link.profile if link is not None else None

    def resolve(self, profile: str) -> str | None:
        """Follow redirects of merged-away profiles to the live one; None if unknown or erased."""
        seen = 0
        while profile not in self.nodes:
            target = self.redirects.get(profile)
            if target is None or seen > len(self.redirects):
                return None
            profile, seen = target, seen + 1
        return profile

    def subjects_of(self, profile: str) -> list[str]:
        """The subjects of a live profile, in link order."""
        node = self.nodes.get(profile)
        return list(node.subjects) if node is not None else []

    def type_counts(self, profile: str, since: datetime | None = None) -> Counter[str]:
        """Values per identifier type on a profile (only those linked at or after `since`, if given)."""
        counts: Counter[str] = Counter()
        for subject in self.nodes[profile].subjects:
            link = self.links[subject]
            if since is None or link.linked_at is None or link.linked_at >= since:
                counts[link.type] += 1
        return counts

    def count_since(self, profile: str, identifier_type: str, since: datetime | None) -> int:
        """Values of one type on a profile, linked at or after `since` (ever when None)."""
        return sum(
            1
            for subject in self.nodes[profile].subjects
            if (link := self.links[subject]).type == identifier_type
            and (since is None or link.linked_at is None or link.linked_at >= since)
        )

    def user_ids(self, profile: str) -> set[str]:
        """The user_id subjects of a profile."""
        return {s for s in self.nodes[profile].subjects if self.links[s].type == USER_ID}

    def merges(self, profile: str) -> int:
        """How many profiles were folded into this one, directly or not."""
        node = self.nodes.get(profile)
        return node.merges if node is not None else self.retired_merges.get(profile, 0)

    def merged_into(self, profile: str) -> list[str]:
        """Every profile id that redirects (directly or not) to `profile`."""
        return [source for source in self.redirects if self.resolve(source) == profile]

    def subjects_from(self, merged: str) -> list[str]:
        """Subjects whose home profile is `merged` or was merged into it: what undoing its merge moves."""
        return [s for s, link in self.links.items() if self._home_passes(link.home, merged)]

    def apply(self, decision: Decision) -> None:
        """Change the graph as the decision says (idempotently)."""
        if isinstance(decision, Linked):
            self._link(decision)
        elif isinstance(decision, Merged):
            self._merge(decision)
        elif isinstance(decision, Rejected):
            self._refuse(decision)
        else:
            self._split(decision)

    def apply_all(self, decisions: Iterable[Decision]) -> None:
        """Apply decisions in order."""
        for decision in decisions:
            self.apply(decision)

    def erase(self, subject: str) -> tuple[str | None, list[str]]:
        """Remove the profile holding `subject` (and tombstone all its subjects); returns it and them."""
        profile = self.profile_of(subject)
        if profile is None:
            self.erased.add(subject)
            self.dirty_subjects.add(subject)
            return None, [subject]
        gone = list(self.nodes.pop(profile).subjects)
        for member in gone:
            del self.links[member]
        for source in [s for s in self.redirects if self.resolve(s) is None]:
            del self.redirects[source]
        self.erased.update(gone)
        self.dirty_subjects.update(gone)
        self.dirty_profiles.add(profile)
        return profile, gone

    def partition(self) -> set[frozenset[str]]:
        """The subjects grouped by profile, ignoring profile ids (to compare graphs built differently)."""
        return {frozenset(node.subjects) for node in self.nodes.values()}

    def _home_passes(self, home: str, merged: str) -> bool:
        while True:
            if home == merged:
                return True
            if home in self.nodes or home not in self.redirects:
                return False
            home = self.redirects[home]

    def _node(self, profile: str) -> Node:
        node = self.nodes.get(profile)
        if node is None:
            node = self.nodes[profile] = Node(merges=self.retired_merges.pop(profile, 0))
            self.redirects.pop(profile, None)
        return node

    def _link(self, d: Linked) -> None:
        # Links are decided only for unknown subjects: a known one means this decision was applied before.
        if d.subject in self.erased or d.subject in self.links:
            return
        self._node(d.profile).subjects[d.subject] = None
        self.links[d.subject] = Link(d.type, d.profile, d.profile, d.seen_at)
        self.dirty_subjects.add(d.subject)
        self.dirty_profiles.add(d.profile)

    def _merge(self, d: Merged) -> None:
        if d.merged == d.profile or d.merged not in self.nodes or d.profile not in self.nodes:
            return
        source, target = self.nodes.pop(d.merged), self.nodes[d.profile]
        for subject in source.subjects:
            target.subjects[subject] = None
            self.links[subject].profile = d.profile
        self.dirty_subjects.update(source.subjects)
        target.merges += 1 + source.merges
        self.retired_merges[d.merged] = source.merges
        target.refused |= source.refused
        for other in source.no_relink:
            if other in self.nodes:
                peer = self.nodes[other]
                peer.no_relink = (peer.no_relink - {d.merged}) | {d.profile}
                target.no_relink |= {other}
        self.redirects[d.merged] = d.profile
        self.dirty_profiles.update((d.profile, d.merged))

    def _retire(self, profile: str, successor: str) -> None:
        """A profile a rebuild left empty: its id (and operator separations) now lead to `successor`."""
        node = self.nodes.pop(profile)
        self.retired_merges[profile] = node.merges
        self.redirects[profile] = successor
        for other in node.no_relink:
            if other in self.nodes and other != successor:
                peer = self.nodes[other]
                peer.no_relink = (peer.no_relink - {profile}) | {successor}
                self.nodes[successor].no_relink |= {other}

    def _refuse(self, d: Rejected) -> None:
        node = self.nodes.get(d.profile)
        if node is not None:
            node.refused |= {f"{d.subject}:{d.rule}"}
            self.dirty_profiles.add(d.profile)

    def _split(self, d: Split) -> None:
        live = self.resolve(d.profile)
        if live is None or live == d.new_profile:
            return
        if d.undone and d.new_profile in self.redirects:
            self.nodes[live].merges -= 1 + self.retired_merges.get(d.new_profile, 0)
        target = self._node(d.new_profile)
        for subject in d.subjects:
            link = self.links.get(subject)
            if link is None or link.profile != live:
                continue
            del self.nodes[live].subjects[subject]
            target.subjects[subject] = None
            link.profile = d.new_profile
            if not d.undone:
                link.home = d.new_profile
            self.dirty_subjects.add(subject)
        # The split may lift the rule behind any refusal the profile remembers: its messages are re-decided
        # after the split (their decisions follow it in the log), refusing again what still fails.
        self.nodes[live].refused = frozenset()
        if d.automatic and not self.nodes[live].subjects:
            self._retire(live, d.new_profile)
        if d.prevent_relink:
            target.no_relink |= {live}
            self.nodes[live].no_relink |= {d.new_profile}
        self.dirty_profiles.update((live, d.new_profile))
