"""Protobuf ↔ use-case types for the identity edge, with the method-specific request rules."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from cdp import payload
from cdp.common.v1 import audit_pb2, identity_pb2
from cdp.errors import FieldViolation, InvalidInput
from cdp.identity.v1 import identity_service_pb2 as pb
from services.identity.application import IdentifierRef, ProfileRef, RulesInForce
from services.identity.domain.identifiers import EXTERNAL_PREFIX
from services.identity.domain.rules import Rules, TypeRule
from services.identity.queries import ProfileRecord

log = structlog.get_logger("cdp.identity.convert")

MAX_RESOLVE = 100
MAX_REASON = 500

TYPE_NAMES = {
    identity_pb2.IDENTIFIER_TYPE_USER_ID: "user_id",
    identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID: "anonymous_id",
    identity_pb2.IDENTIFIER_TYPE_EMAIL: "email",
    identity_pb2.IDENTIFIER_TYPE_PHONE: "phone",
    identity_pb2.IDENTIFIER_TYPE_DEVICE_ID: "device_id",
    identity_pb2.IDENTIFIER_TYPE_ADVERTISING_ID: "advertising_id",
}
TYPE_ENUMS = {name: number for number, name in TYPE_NAMES.items()}
KINDS = {
    "create": pb.DECISION_KIND_CREATE,
    "link": pb.DECISION_KIND_LINK,
    "merge": pb.DECISION_KIND_MERGE,
    "refuse": pb.DECISION_KIND_REFUSE,
    "split": pb.DECISION_KIND_SPLIT,
}
RULES = {
    "new_identifier": pb.DECISION_RULE_NEW_IDENTIFIER,
    "shared_message": pb.DECISION_RULE_SHARED_MESSAGE,
    "alias": pb.DECISION_RULE_ALIAS,
    "merge_protection": pb.DECISION_RULE_MERGE_PROTECTION,
    "max_merges": pb.DECISION_RULE_MAX_MERGES,
    "prevented_relink": pb.DECISION_RULE_MANUAL_SPLIT,
    "manual_split": pb.DECISION_RULE_MANUAL_SPLIT,
}
EXPLANATIONS = {
    "merge_protection": "merge protection: the profiles hold different user ids",
    "max_merges": "the survivor already holds the maximum number of merged profiles",
    "prevented_relink": "an operator split these profiles and asked that they stay apart",
    "new_identifier": "a message carried an identifier not seen before",
    "shared_message": "a message carried these identifiers together",
    "alias": "an alias message declared previousId and userId the same person",
}
# The fields a read mask may choose; `repaired_fields` follows what was chosen.
PROFILE_FIELDS = {f.name for f in pb.Profile.DESCRIPTOR.fields} - {"repaired_fields"}


def identifier_ref(message: identity_pb2.Identifier, path: str) -> IdentifierRef:
    """An Identifier as a use-case ref; EXTERNAL needs a lower_snake_case namespace, others none."""
    if message.type == identity_pb2.IDENTIFIER_TYPE_EXTERNAL:
        namespace = message.namespace.strip()
        if not namespace or namespace != namespace.lower() or " " in namespace:
            raise InvalidInput.field(f"{path}.namespace", "is required for EXTERNAL (lower_snake_case)")
        return IdentifierRef(EXTERNAL_PREFIX + namespace, message.value)
    if message.namespace:
        raise InvalidInput.field(f"{path}.namespace", "is only for EXTERNAL identifiers")
    if message.type not in TYPE_NAMES:
        raise InvalidInput.field(f"{path}.type", "is not a known identifier type")
    return IdentifierRef(TYPE_NAMES[message.type], message.value)


def identifier_message(identifier_type: str, value: str) -> identity_pb2.Identifier:
    """An Identifier message from a type name and normalised value."""
    if identifier_type.startswith(EXTERNAL_PREFIX):
        namespace = identifier_type[len(EXTERNAL_PREFIX) :]
        return identity_pb2.Identifier(
            type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL, value=value, namespace=namespace
        )
    return identity_pb2.Identifier(type=TYPE_ENUMS[identifier_type], value=value)


def profile_ref(message: identity_pb2.ProfileRef, path: str = "profile") -> ProfileRef:
    """A ProfileRef (already checked by shared validation) as a use-case ref."""
    if message.WhichOneof("ref") is None:
        raise InvalidInput.field(path, "is required")
    if message.WhichOneof("ref") == "profile_id":
        return ProfileRef(profile_id=message.profile_id.strip())
    return ProfileRef(identifier=identifier_ref(message.identifier, f"{path}.identifier"))


def to_datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    """A Timestamp as an aware UTC datetime."""
    return stamp.ToDatetime(tzinfo=UTC)


def timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    """An aware datetime as a Timestamp (None stays unset)."""
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def struct(values: Mapping[str, Any], path: str = "", repaired: list[str] | None = None) -> struct_pb2.Struct:
    """JSON-like values as a Struct; what no Struct can hold is replaced and its path added to `repaired`."""
    clean, found = payload.repaired(dict(values), path)
    message = struct_pb2.Struct()
    json_format.ParseDict(clean, message)
    if repaired is not None:
        repaired.extend(found)
    return message


def profile_message(record: ProfileRecord, mask: list[str]) -> pb.Profile:
    """A Profile with only the masked fields (all when the mask is empty), naming any value it had to repair."""
    repaired: list[str] = []
    profile = pb.Profile(
        profile_id=record.profile_id,
        identifiers=[
            pb.ProfileIdentifier(
                identifier=identifier_message(i.type, i.value),
                first_seen=timestamp(i.first_seen),
                last_seen=timestamp(i.last_seen),
            )
            for i in record.identifiers
        ],
        traits=struct(record.traits, "traits", repaired),
        stats=_stats(record.stats),
        merged_profile_ids=record.merged_profile_ids,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
    )
    chosen = set(mask or PROFILE_FIELDS)
    for name in PROFILE_FIELDS - chosen:
        profile.ClearField(name)
    if repaired:
        _log_repaired_once(record.profile_id, repaired)
        profile.repaired_fields.extend(p for p in repaired if p.split(".", 1)[0].split("[", 1)[0] in chosen)
    return profile


REPLY_MARGIN = 64 * 1024
"""Bytes of a reply left for what surrounds its profiles (the redirect flag, a page token, gRPC framing)."""

CUT_TO_FIT = ("traits", "stats.event_counts", "stats.sources", "identifiers", "merged_profile_ids")
"""The fields that grow with a person's history, cut in this order when a profile is too big for one reply."""


def reply_budget(max_message_bytes: int) -> int:
    """Bytes the profiles of one reply may take, for a server that sends at most `max_message_bytes`."""
    return max(max_message_bytes // 2, max_message_bytes - REPLY_MARGIN)


def fit(profile: pb.Profile, budget: int) -> int:
    """Cut the profile, in place, to `budget` bytes; its size after. A person with more traits (or events,
    identifiers, merges) than one reply can carry loses the last entries of those fields, in key order, and
    each field cut is named in `repaired_fields` by its name alone (a path inside it means a value replaced).
    Without this the reply exceeds the send limit: GetProfile answers RESOURCE_EXHAUSTED and every ListProfiles
    page holding the person fails, for everyone."""
    size = profile.ByteSize()
    if size <= budget:
        return size
    cut = [name for name in CUT_TO_FIT if _cut(profile, name, budget)]
    profile.repaired_fields.extend(cut)
    _log_repaired_once(profile.profile_id, list(profile.repaired_fields))
    return profile.ByteSize()


def _cut(profile: pb.Profile, name: str, budget: int) -> bool:
    """Drop the last entries of one field until the profile fits or the field is empty; whether any went."""
    cut = False
    while (excess := profile.ByteSize() - budget) > 0:
        field = _field(profile, name)
        if not field:
            break
        cut = True
        freed = 0
        if name in ("identifiers", "merged_profile_ids"):  # repeated: the last ones go
            while field and freed <= excess:
                last = field[-1]
                freed += 4 + (len(last.encode()) if isinstance(last, str) else last.ByteSize())
                del field[-1]
            continue
        for key in sorted(field.keys(), reverse=True):  # maps: the last keys go
            if freed > excess:
                break
            value = field[key]
            freed += 12 + len(key.encode()) + (value.ByteSize() if name == "traits" else 0)
            del field[key]
    return cut


def _field(profile: pb.Profile, name: str) -> Any:
    """The container one of `CUT_TO_FIT` names."""
    if name == "traits":
        return profile.traits.fields
    if name.startswith("stats."):
        return getattr(profile.stats, name.removeprefix("stats."))
    return getattr(profile, name)


_REPAIRS_LOGGED: OrderedDict[str, None] = OrderedDict()
_REPAIRS_REMEMBERED = 10_000


def _log_repaired_once(profile_id: str, paths: list[str]) -> None:
    """One warning per profile (a bounded memo), with its id and the paths, never the values."""
    if profile_id in _REPAIRS_LOGGED:
        return
    _REPAIRS_LOGGED[profile_id] = None
    if len(_REPAIRS_LOGGED) > _REPAIRS_REMEMBERED:
        _REPAIRS_LOGGED.popitem(last=False)
    log.warning("profile_values_repaired", profile_id=profile_id, fields=paths[:20], count=len(paths))


def _stats(stats: Mapping[str, Any]) -> pb.ProfileStats:
    def moment(key: str) -> timestamp_pb2.Timestamp | None:
        micros = stats.get(key)
        return None if micros is None else timestamp(datetime.fromtimestamp(micros / 1_000_000, tz=UTC))

    return pb.ProfileStats(
        first_seen=moment("first_seen"),
        last_seen=moment("last_seen"),
        message_counts=_counts(stats.get("message_counts")),
        event_counts=_counts(stats.get("event_counts")),
        sources=_counts(stats.get("sources")),
    )


def _counts(counts: Any) -> dict[str, int]:
    """A count map a protobuf map<string, int64> can hold: keys made valid UTF-8 (an event name from before the
    door's limits may hold a lone surrogate), counts that are not 64-bit integers left out."""
    if not isinstance(counts, Mapping):
        return {}
    return {
        str(name).encode("utf-8", "replace").decode(): count
        for name, count in counts.items()
        if isinstance(count, int) and -(2**63) <= count < 2**63
    }


def read_mask(paths: Iterable[str], path: str = "read_mask") -> list[str]:
    """Top-level Profile field names; anything else is refused."""
    fields = list(paths)
    for index, name in enumerate(fields):
        if name not in PROFILE_FIELDS:
            raise InvalidInput.field(f"{path}.paths[{index}]", f"is not a Profile field ({name!r})")
    return fields


def decision_message(row: Mapping[str, Any], clear: Mapping[str, tuple[str, str]]) -> pb.IdentityDecision:
    """A decisions-table row as an IdentityDecision (identifiers shown in the clear when known)."""
    kind, rule = row["kind"], str(row["rule"])
    decision = pb.IdentityDecision(
        decision_id=row["decision_id"],
        kind=KINDS.get(kind, pb.DECISION_KIND_UNSPECIFIED),  # a kind a newer version wrote reads as unknown
        rule=RULES.get(rule, pb.DECISION_RULE_VALUE_LIMIT),
        profile_id=row["profile_id"],
        cause_message_id=row["cause_message_id"],
        actor=audit_pb2.Actor(
            kind=audit_pb2.ACTOR_KIND_OPERATOR if row["manual"] else audit_pb2.ACTOR_KIND_SYSTEM,
            id="admin" if row["manual"] else "identity",
        ),
        explanation=row["explanation"] or _explain(rule),
        decide_time=timestamp(_from_micros(row["decide_time"])),
    )
    if kind in ("merge", "refuse"):
        decision.source_profile_id = row["other_profile_id"]
    if kind == "split":
        decision.new_profile_id = row["other_profile_id"]
    for entry in row["identifiers"]:
        found = clear.get(entry[-1])
        if found is not None:
            decision.identifiers.append(identifier_message(*found))
    return decision


def _explain(rule: str) -> str:
    if rule.startswith("value_limit:"):
        return f"the profile already holds the maximum number of {rule.split(':', 1)[1]} values"
    return EXPLANATIONS.get(rule, rule)


def _from_micros(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1_000_000, tz=UTC)


def rules_from_message(message: pb.IdentityRules) -> Rules:
    """IdentityRules as domain rules, naming every invalid field."""
    violations: list[FieldViolation] = []
    rules: list[TypeRule] = []
    for index, item in enumerate(message.rules):
        try:
            rules.append(_type_rule(item, f"rules.rules[{index}]"))
        except InvalidInput as error:
            violations += error.violations
    # Duplicates are judged on what was asked, valid or not, so the index is the request's.
    types = [(item.type, item.namespace) for item in message.rules]
    for index, identifier_type in enumerate(types):
        if identifier_type in types[:index]:
            violations.append(FieldViolation(f"rules.rules[{index}].type", "has a rule already"))
    if message.HasField("max_merges") and message.max_merges < 0:
        violations.append(FieldViolation("rules.max_merges", "must not be negative"))
    if violations:
        raise InvalidInput(violations)
    return Rules(tuple(rules), message.max_merges if message.HasField("max_merges") else None)


def _type_rule(item: pb.IdentifierRule, path: str) -> TypeRule:
    probe = identity_pb2.Identifier(type=item.type, value="x", namespace=item.namespace)
    if item.type == identity_pb2.IDENTIFIER_TYPE_UNSPECIFIED:
        raise InvalidInput.field(f"{path}.type", "is required")
    identifier_type = identifier_ref(probe, path).type
    violations = []
    if item.HasField("value_limit") and item.value_limit < 1:
        violations.append(FieldViolation(f"{path}.value_limit", "must be at least 1"))
    window = item.limit_window.ToTimedelta() if item.HasField("limit_window") else None
    if window is not None and window.total_seconds() <= 0:
        violations.append(FieldViolation(f"{path}.limit_window", "must be positive"))
    for index, pattern in enumerate(item.blocked_patterns):
        violations += _pattern_violation(pattern, f"{path}.blocked_patterns[{index}]")
    if violations:
        raise InvalidInput(violations)
    return TypeRule(
        identifier_type,
        item.value_limit if item.HasField("value_limit") else None,
        int(window.total_seconds()) if window is not None else None,
        frozenset(item.blocked_values),
        tuple(item.blocked_patterns),
    )


def _pattern_violation(pattern: str, path: str) -> list[FieldViolation]:

    try:
        re.compile(pattern)
    except re.error as error:
        return [FieldViolation(path, f"is not a regular expression: {error}")]
    return []


def rules_message(found: RulesInForce) -> pb.IdentityRules:
    """Rules in force as IdentityRules."""
    message = pb.IdentityRules(version=found.version)
    for rule in found.rules.rules:
        probe = identifier_message(rule.type, "x")
        item = pb.IdentifierRule(
            type=probe.type,
            namespace=probe.namespace,
            blocked_values=sorted(rule.blocked_values),
            blocked_patterns=list(rule.blocked_patterns),
        )
        if rule.value_limit is not None:
            item.value_limit = rule.value_limit
        if rule.window_seconds is not None:
            item.limit_window.FromSeconds(rule.window_seconds)
        message.rules.append(item)
    if found.rules.max_merges is not None:
        message.max_merges = found.rules.max_merges
    if found.update_time is not None:
        message.update_time.FromDatetime(found.update_time)
    if found.updated_by:
        message.updated_by.CopyFrom(audit_pb2.Actor(kind=audit_pb2.ACTOR_KIND_OPERATOR, id=found.updated_by))
    return message
