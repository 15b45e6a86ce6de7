"""Keyring crypto over the in-memory key store: envelopes, tampering, wrapping, and round-trip properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp.keyring import (
    DecryptionFailed,
    InMemoryKeyStore,
    Keyring,
    MasterKeyError,
    MasterKeys,
    SubjectErased,
    SubjectIds,
    decrypt_value_with,
    parse_master_key,
)
from cdp.keyring.cipher import key_version

MASTER = MasterKeys(parse_master_key("ab" * 32))
IDS = SubjectIds(b"unit-test-subject-secret-0123456789")
ALICE, BOB = IDS("user_id", "alice"), IDS("user_id", "bob")
RING = Keyring(InMemoryKeyStore(), MASTER)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


@given(plaintext=st.binary(max_size=2048), aad=st.binary(max_size=64))
def test_bytes_round_trip(plaintext: bytes, aad: bytes) -> None:
    assert RING.decrypt(ALICE, RING.encrypt(ALICE, plaintext, aad=aad), aad=aad) == plaintext


@given(value=json_values, context=st.text(max_size=20))
def test_json_values_round_trip(value: Any, context: str) -> None:
    token = RING.encrypt_value(ALICE, value, context=context)
    assert RING.decrypt_value(ALICE, token, context=context) == value


@given(plaintext=st.binary(min_size=1, max_size=256), flip=st.integers(min_value=0))
def test_any_flipped_bit_is_detected(plaintext: bytes, flip: int) -> None:
    sealed = bytearray(RING.encrypt(ALICE, plaintext))
    index = 5 + flip % (
        len(sealed) - 5
    )  # past the header: header changes are caught as format/version errors
    sealed[index] ^= 1 << (flip % 8)
    with pytest.raises(DecryptionFailed):
        RING.decrypt(ALICE, bytes(sealed))


def test_each_encryption_uses_a_fresh_nonce() -> None:
    assert RING.encrypt(ALICE, b"same") != RING.encrypt(ALICE, b"same")


def test_envelope_carries_format_and_key_version() -> None:
    sealed = RING.encrypt(ALICE, b"x")
    assert sealed[0] == 1
    assert key_version(sealed) == 1


def test_replay_under_another_subject_fails() -> None:
    sealed = RING.encrypt(ALICE, b"x")
    RING.data_keys([BOB])
    with pytest.raises(DecryptionFailed):
        RING.decrypt(BOB, sealed)


def test_garbage_is_refused_cleanly() -> None:
    with pytest.raises(DecryptionFailed):
        RING.decrypt(ALICE, b"\x02" + bytes(40))
    with pytest.raises(DecryptionFailed):
        RING.decrypt_value(ALICE, "not base64!", context="x")


def test_unknown_master_key_is_a_clear_error() -> None:
    store = InMemoryKeyStore()
    Keyring(store, MASTER).data_keys([ALICE])
    stranger = Keyring(store, MasterKeys(parse_master_key("cd" * 32)))
    with pytest.raises(MasterKeyError):
        stranger.data_keys([ALICE])


def test_swapped_wrapped_key_rows_do_not_unwrap() -> None:
    store = InMemoryKeyStore()
    Keyring(store, MASTER).data_keys([ALICE, BOB])
    store._keys[ALICE], store._keys[BOB] = store._keys[BOB], store._keys[ALICE]
    with pytest.raises(DecryptionFailed):
        Keyring(store, MASTER).data_keys([ALICE])


def test_shred_then_batch_reports_erased_per_subject() -> None:
    ring = Keyring(InMemoryKeyStore(), MASTER)
    ring.shred(ALICE)
    keys = ring.data_keys([ALICE, BOB])
    assert keys[ALICE].erased and not keys[BOB].erased
    with pytest.raises(SubjectErased):
        _ = keys[ALICE].current_version


async def test_prefetch_fills_the_cache_from_a_thread() -> None:
    ring = Keyring(InMemoryKeyStore(), MASTER)
    keys = await ring.prefetch([ALICE, BOB])
    assert set(keys) == {ALICE, BOB}
    assert ring.data_keys([ALICE])[ALICE] is keys[ALICE]


@given(value=json_values, context=st.text(max_size=20))
def test_decrypting_with_fetched_keys_equals_the_keyring(value: Any, context: str) -> None:
    token = RING.encrypt_value(ALICE, value, context=context)
    keys = RING.data_keys([ALICE])[ALICE]
    assert decrypt_value_with(keys, token, context=context) == RING.decrypt_value(
        ALICE, token, context=context
    )


def test_decrypting_with_fetched_keys_fails_as_the_keyring_does() -> None:
    ring = Keyring(InMemoryKeyStore(), MASTER)
    token = ring.encrypt_value(ALICE, {"a": 1}, context="c")
    keys = ring.data_keys([ALICE, BOB])
    for bad in (token, "not base64!", token[:-4] + "AAAA"):
        with pytest.raises(DecryptionFailed):
            decrypt_value_with(keys[BOB] if bad == token else keys[ALICE], bad, context="c")
    ring.shred(ALICE)
    with pytest.raises(SubjectErased):
        decrypt_value_with(ring.data_keys([ALICE])[ALICE], token, context="c")
