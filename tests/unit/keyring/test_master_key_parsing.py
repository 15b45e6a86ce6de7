"""Master key text formats and rotation look-ups (no files: see the integration tests for key files)."""

from __future__ import annotations

import base64

import pytest

from cdp.keyring import (
    MasterKeyError,
    MasterKeys,
    generate_master_key_text,
    load_master_key,
    parse_master_key,
)


def test_hex_and_base64_forms_parse_to_the_same_key() -> None:
    raw = bytes(range(32))
    forms = [raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")]
    assert {parse_master_key(form).key for form in forms} == {raw}


@pytest.mark.parametrize("text", ["", "abc", "zz" * 32, base64.b64encode(bytes(16)).decode()])
def test_malformed_keys_are_refused(text: str) -> None:
    with pytest.raises(MasterKeyError):
        parse_master_key(text)


def test_generated_keys_are_random_and_valid() -> None:
    first, second = generate_master_key_text(), generate_master_key_text()
    assert first != second
    assert len(parse_master_key(first).key) == 32


def test_explicit_value_wins_and_retired_keys_are_found_by_id() -> None:
    old = generate_master_key_text()
    keys = load_master_key(generate_master_key_text(), retired=[old])
    assert keys.get(parse_master_key(old).key_id).key == parse_master_key(old).key
    with pytest.raises(MasterKeyError):
        MasterKeys(keys.current).get(parse_master_key(old).key_id)


@pytest.mark.parametrize("production", [False, True])
def test_no_key_at_all_is_refused(production: bool) -> None:
    with pytest.raises(MasterKeyError, match="CDP_MASTER_KEY"):
        load_master_key("", None, production=production)


def test_key_is_not_in_its_repr() -> None:
    key = parse_master_key("ab" * 32)
    assert "ab" * 4 not in repr(key)
