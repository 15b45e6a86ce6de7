"""Identity rules: per-type value limits, priority order, blocked values, merge cap."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.identity.domain.identifiers import BUILT_IN_TYPES, EMAIL, USER_ID

DEFAULT_BLOCKED = frozenset({"", "null", "undefined", "anonymous", "0", "[object object]", "none", "nan"})
"""Values SDKs send by mistake; compared case-insensitively after normalisation."""

DEFAULT_MAX_MERGES = 100
DEFAULT_LIMITS = {USER_ID: 1}
DEFAULT_OTHER_LIMIT = 5


@dataclass(frozen=True)
class TypeRule:
    """How one identifier type takes part in resolution."""

    type: str
    value_limit: int | None = None
    window_seconds: int | None = None
    blocked_values: frozenset[str] = frozenset()
    blocked_patterns: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON object for the IdentityRulesSet event."""
        return {
            "type": self.type,
            "value_limit": self.value_limit,
            "window_seconds": self.window_seconds,
            "blocked_values": sorted(self.blocked_values),
            "blocked_patterns": list(self.blocked_patterns),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TypeRule:
        """The inverse of `to_json`."""
        return cls(
            type=str(data["type"]),
            value_limit=data.get("value_limit"),
            window_seconds=data.get("window_seconds"),
            blocked_values=frozenset(str(v) for v in data.get("blocked_values", ())),
            blocked_patterns=tuple(str(p) for p in data.get("blocked_patterns", ())),
        )


@dataclass(frozen=True)
class Rules:
    """The complete configuration; `rules` are in priority order (first = highest)."""

    rules: tuple[TypeRule, ...]
    max_merges: int | None = DEFAULT_MAX_MERGES
    version: int = 0
    _by_type: dict[str, tuple[int, TypeRule]] = field(init=False, repr=False, compare=False)
    _patterns: dict[str, tuple[re.Pattern[str], ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Lookups and compiled patterns are built once: rules change rarely, values arrive by the million.
        by_type = {rule.type: (index, rule) for index, rule in enumerate(self.rules)}
        patterns = {rule.type: tuple(re.compile(p) for p in rule.blocked_patterns) for rule in self.rules}
        object.__setattr__(self, "_by_type", by_type)
        object.__setattr__(self, "_patterns", patterns)

    def rank(self, identifier_type: str) -> int:
        """Priority rank (lower wins); unlisted types come after every listed one."""
        found = self._by_type.get(identifier_type)
        return found[0] if found is not None else len(self.rules)

    def limit(self, identifier_type: str) -> tuple[int | None, int | None]:
        """`(value limit, window seconds)` for the type; unlisted types are unlimited."""
        found = self._by_type.get(identifier_type)
        return (found[1].value_limit, found[1].window_seconds) if found else (None, None)

    def is_blocked(self, identifier_type: str, value: str) -> bool:
        """Whether a normalised value must never link anything."""
        if value.lower() in DEFAULT_BLOCKED:
            return True
        found = self._by_type.get(identifier_type)
        if found is None:
            return False
        rule = found[1]
        if value in rule.blocked_values:
            return True
        return any(p.fullmatch(value) for p in self._patterns[identifier_type])


def default_rules() -> Rules:
    """user_id (limit 1), email, then the other built-in types (limit 5); at most 100 merges."""
    order = [USER_ID, EMAIL, *(t for t in BUILT_IN_TYPES if t not in (USER_ID, EMAIL))]
    return Rules(
        tuple(TypeRule(t, DEFAULT_LIMITS.get(t, DEFAULT_OTHER_LIMIT)) for t in order),
        max_merges=DEFAULT_MAX_MERGES,
    )


def rules_to_json(rules: Rules) -> dict[str, Any]:
    """The rule set as the IdentityRulesSet event's `rules` object."""
    return {"rules": [rule.to_json() for rule in rules.rules]}


def rules_from_json(
    data: Mapping[str, Any], max_merges: int | None, version: int, fallback: Sequence[str] = ()
) -> Rules:
    """Rules from an IdentityRulesSet event (`fallback`: priority list of events without `rules`)."""
    items = data.get("rules")
    if isinstance(items, list):
        return Rules(tuple(TypeRule.from_json(item) for item in items), max_merges, version)
    return Rules(tuple(TypeRule(t) for t in fallback), max_merges, version)
