"""Crypto-shredding: subject ids, per-subject data keys wrapped by a master key, field encryption, shredding."""

from __future__ import annotations

from cdp.keyring.cache import KeyCache, SubjectKeys
from cdp.keyring.errors import DecryptionFailed, KeyringError, MasterKeyError, SubjectErased
from cdp.keyring.keyring import Keyring, decrypt_value_with
from cdp.keyring.master import (
    MasterKey,
    MasterKeys,
    generate_key_file,
    generate_master_key_text,
    load_master_key,
    parse_master_key,
)
from cdp.keyring.memory import InMemoryKeyStore
from cdp.keyring.store import KeyStore, StoredSubject, WrappedKey
from cdp.keyring.subjects import SubjectIds, check_subject_id, is_subject_id, subject_id
from cdp.sqlengine import DEPENDENCY_TIMEOUT

__all__ = [
    "DecryptionFailed",
    "InMemoryKeyStore",
    "KeyCache",
    "KeyStore",
    "Keyring",
    "KeyringError",
    "MasterKey",
    "MasterKeyError",
    "MasterKeys",
    "StoredSubject",
    "SubjectErased",
    "SubjectIds",
    "SubjectKeys",
    "WrappedKey",
    "check_subject_id",
    "decrypt_value_with",
    "generate_key_file",
    "generate_master_key_text",
    "is_subject_id",
    "load_master_key",
    "open_keyring",
    "parse_master_key",
    "subject_id",
]


def open_keyring(
    url: str,
    master: MasterKeys,
    *,
    cache_ttl: float = 60.0,
    cache_size: int = 10_000,
    timeout: float = DEPENDENCY_TIMEOUT,
) -> Keyring:
    """A keyring over the SQL key store at `url` (`sqlite:///data/keyring.db`, `postgresql://…`); `timeout`
    bounds each wait for a PostgreSQL server that does not answer."""
    from cdp.keyring.sql import SqlKeyStore

    return Keyring(SqlKeyStore(url, timeout=timeout), master, cache_ttl=cache_ttl, cache_size=cache_size)
