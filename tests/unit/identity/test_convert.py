"""The gRPC edge's request rules and conversions (no server: protobuf in, use-case types out)."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2

from cdp.common.v1 import identity_pb2
from cdp.errors import InvalidInput
from cdp.identity.v1 import identity_service_pb2 as pb
from services.identity import convert
from services.identity.application import RulesInForce
from services.identity.domain.rules import default_rules

EMAIL = identity_pb2.IDENTIFIER_TYPE_EMAIL


def test_rules_round_trip_between_protobuf_and_domain() -> None:
    message = pb.IdentityRules(
        rules=[
            pb.IdentifierRule(type=identity_pb2.IDENTIFIER_TYPE_USER_ID, value_limit=1),
            pb.IdentifierRule(
                type=EMAIL,
                value_limit=2,
                limit_window=duration_pb2.Duration(seconds=3600),
                blocked_values=["test@example.com"],
                blocked_patterns=[r".*@spam\.io"],
            ),
            pb.IdentifierRule(type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL, namespace="crm_id"),
        ],
        max_merges=7,
    )
    rules = convert.rules_from_message(message)
    assert [r.type for r in rules.rules] == ["user_id", "email", "external:crm_id"]
    assert rules.limit("email") == (2, 3600) and rules.max_merges == 7
    back = convert.rules_message(RulesInForce(rules, 3, None, ""))
    back.ClearField("version")
    assert back == message


def test_invalid_rules_name_every_bad_field() -> None:
    message = pb.IdentityRules(
        rules=[
            pb.IdentifierRule(type=EMAIL, value_limit=0, blocked_patterns=["ok", "(bad"]),
            pb.IdentifierRule(type=EMAIL),
            pb.IdentifierRule(type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL),
        ],
        max_merges=-1,
    )
    with pytest.raises(InvalidInput) as raised:
        convert.rules_from_message(message)
    assert [v.field for v in raised.value.violations] == [
        "rules.rules[0].value_limit",
        "rules.rules[0].blocked_patterns[1]",
        "rules.rules[2].namespace",
        "rules.rules[1].type",
        "rules.max_merges",
    ]


def test_identifier_namespaces_belong_to_external_ids_only() -> None:
    external = identity_pb2.Identifier(
        type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL, value="9", namespace="crm_id"
    )
    assert convert.identifier_ref(external, "x").type == "external:crm_id"
    with pytest.raises(InvalidInput, match=r"x\.namespace"):
        convert.identifier_ref(identity_pb2.Identifier(type=EMAIL, value="a@b.c", namespace="n"), "x")


def test_a_read_mask_names_profile_fields_only() -> None:
    assert convert.read_mask(["traits", "identifiers"]) == ["traits", "identifiers"]
    with pytest.raises(InvalidInput, match=r"read_mask\.paths\[1\]"):
        convert.read_mask(["traits", "nope"])


def test_the_default_rules_are_what_get_rules_shows_before_any_set() -> None:
    shown = convert.rules_message(RulesInForce(default_rules(), 0, None, ""))
    assert shown.version == 0 and shown.max_merges == 100
    assert [(r.type, r.value_limit) for r in shown.rules][:2] == [
        (identity_pb2.IDENTIFIER_TYPE_USER_ID, 1),
        (EMAIL, 5),
    ]
