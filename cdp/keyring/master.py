"""Master keys: the keys that wrap every data key; loaded from a value or a key file, never from the environment."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cdp.keyring.errors import MasterKeyError

KEY_BYTES = 32


@dataclass(frozen=True)
class MasterKey:
    """One 256-bit master key and its id, a fingerprint stored beside every key it wraps."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise MasterKeyError(f"a master key is {KEY_BYTES} bytes, got {len(self.key)}")

    @functools.cached_property
    def key_id(self) -> str:
        """A short fingerprint; it identifies the key during rotation and reveals nothing usable.

        Cached: every data key unwrapped looks its master key up by id.
        """
        return hashlib.sha256(b"cdp.master-key-id.v1\x00" + self.key).hexdigest()[:16]


@dataclass(frozen=True)
class MasterKeys:
    """The current master key (wraps new keys) and retired ones (still unwrap until re-wrapped)."""

    current: MasterKey
    retired: tuple[MasterKey, ...] = ()

    def get(self, key_id: str) -> MasterKey:
        """The master key with this id; MasterKeyError if it was rotated out."""
        for key in (self.current, *self.retired):
            if key.key_id == key_id:
                return key
        raise MasterKeyError(f"master key {key_id} is not loaded: pass it as a retired key to unwrap")


def parse_master_key(text: str) -> MasterKey:
    """A master key from 64 hex characters or base64 (standard or URL-safe) of 32 bytes."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 2 * KEY_BYTES else _b64decode(text)
    except (ValueError, binascii.Error) as error:
        raise MasterKeyError("a master key is 32 bytes as base64 or hex") from error
    return MasterKey(raw)


def generate_master_key_text() -> str:
    """A fresh random master key as base64 text."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def generate_key_file(path: Path) -> None:
    """Create a key file readable only by its owner (0600); a file already there is left untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(generate_master_key_text() + "\n")
            out.flush()
            os.fsync(out.fileno())
        # link() fails if the name exists, so concurrent first starts agree on one complete file.
        os.link(scratch, path)
    except FileExistsError:
        pass
    finally:
        scratch.unlink(missing_ok=True)


def load_master_key(
    value: str = "",
    key_file: Path | None = None,
    *,
    production: bool = False,
    retired: Iterable[str] = (),
) -> MasterKeys:
    """The master keys from an explicit value, else a key file (generated when missing, except in production)."""
    current = parse_master_key(value) if value else _from_file(key_file, production)
    return MasterKeys(current, tuple(parse_master_key(text) for text in retired))


def _from_file(key_file: Path | None, production: bool) -> MasterKey:
    """Read the key file, creating it for a local cluster; production refuses anything implicit."""
    if key_file is None:
        raise MasterKeyError("no master key: set CDP_MASTER_KEY or CDP_MASTER_KEY_FILE")
    if not key_file.exists():
        if production:
            raise MasterKeyError(f"master key file {key_file} does not exist; production never generates one")
        generate_key_file(key_file)
    if production and key_file.stat().st_mode & 0o077:
        raise MasterKeyError(f"master key file {key_file} is readable by others; chmod 600 it")
    return parse_master_key(key_file.read_text())


def _b64decode(text: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding."""
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
