"""Errors the keyring raises; none of them carries key material or personal data."""

from __future__ import annotations


class KeyringError(Exception):
    """Base of every error the keyring raises."""


class SubjectErased(KeyringError):
    """The subject's keys were shredded: its data can never be read or written again."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        super().__init__(f"subject {subject} was erased; its data keys no longer exist")


class DecryptionFailed(KeyringError):
    """The ciphertext is malformed, was tampered with, or belongs to another subject or context."""


class MasterKeyError(KeyringError):
    """The master key is missing, malformed, or unknown (e.g. a key was rotated out too early)."""
