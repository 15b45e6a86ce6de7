"""AES-256-GCM for data (the envelope) and for wrapping data keys under a master key.

Envelope, version 1: `0x01 | key version (4 bytes, big-endian) | nonce (12) | ciphertext + tag (16)`.
The associated data binds a ciphertext to its subject and header, so it cannot be replayed under another
subject's key or with a forged key version, and to the caller's context (event type, field name).
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cdp.keyring.errors import DecryptionFailed
from cdp.keyring.master import MasterKey

FORMAT_V1 = 1
NONCE_BYTES = 12
HEADER_BYTES = 5
_MIN_LENGTH = HEADER_BYTES + NONCE_BYTES + 16


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return AESGCM.generate_key(bit_length=256)


def seal(key: bytes, version: int, subject: str, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt `plaintext` into a version-1 envelope under one subject's data key."""
    header = bytes([FORMAT_V1]) + version.to_bytes(4, "big")
    nonce = secrets.token_bytes(NONCE_BYTES)
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, _data_aad(subject, header, aad))


def key_version(envelope: bytes) -> int:
    """The data key version an envelope was sealed with; DecryptionFailed if it is not an envelope."""
    if len(envelope) < _MIN_LENGTH or envelope[0] != FORMAT_V1:
        raise DecryptionFailed("not a keyring envelope (unknown format or truncated)")
    return int.from_bytes(envelope[1:HEADER_BYTES], "big")


def open_sealed(key: bytes, subject: str, envelope: bytes, aad: bytes) -> bytes:
    """Decrypt a version-1 envelope; DecryptionFailed on tampering, wrong subject or wrong context."""
    header, nonce = envelope[:HEADER_BYTES], envelope[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(
            nonce, envelope[HEADER_BYTES + NONCE_BYTES :], _data_aad(subject, header, aad)
        )
    except InvalidTag as error:
        raise DecryptionFailed("ciphertext does not authenticate for this subject and context") from error


def wrap(master: MasterKey, subject: str, version: int, data_key: bytes) -> bytes:
    """Encrypt a data key under the master key, bound to its subject and version (a swapped row fails)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(master.key).encrypt(nonce, data_key, _wrap_aad(master, subject, version))


def unwrap(master: MasterKey, subject: str, version: int, wrapped: bytes) -> bytes:
    """Decrypt a wrapped data key; DecryptionFailed if the row was altered or moved to another subject."""
    try:
        return AESGCM(master.key).decrypt(
            wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(master, subject, version)
        )
    except InvalidTag as error:
        raise DecryptionFailed("wrapped data key does not authenticate (altered or misplaced row)") from error


def _data_aad(subject: str, header: bytes, aad: bytes) -> bytes:
    """Subject ids have a fixed length, so the concatenation is unambiguous."""
    return b"cdp.keyring.data.v1\x00" + subject.encode() + b"\x00" + header + aad


def _wrap_aad(master: MasterKey, subject: str, version: int) -> bytes:
    """What a wrapped key is bound to: the subject, the key version and the wrapping key's id."""
    return b"cdp.keyring.dek.v1\x00" + f"{subject}\x00{version}\x00{master.key_id}".encode()
