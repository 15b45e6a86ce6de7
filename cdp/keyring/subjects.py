"""Subject ids: keyed hashes that name a person in streams and events without revealing who it is."""

from __future__ import annotations

import hashlib
import hmac
import re

SUBJECT_ID_HEX_CHARS = 32
"""128 bits: the chance of any collision among 10^9 subjects is about 10^-21 (birthday bound)."""

_SUBJECT_ID = re.compile(rf"^[0-9a-f]{{{SUBJECT_ID_HEX_CHARS}}}$")
_DOMAIN = b"cdp.subject-id.v1"


_RECENT = 100_000
"""How many identifier → subject id answers a `SubjectIds` keeps (about 20 MB at most)."""


class SubjectIds:
    """Turns `(identifier type, value)` into a subject id with HMAC-SHA256 keyed by the subject secret."""

    def __init__(self, secret: bytes | str) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < 16:
            raise ValueError("the subject secret must be at least 16 bytes long")
        self._key = key
        self._recent: dict[tuple[str, str], str] = {}

    def __reduce__(self) -> tuple[type[SubjectIds], tuple[bytes]]:
        """Pickled as the secret alone: the answers it remembers are clear values and stay behind."""
        return SubjectIds, (self._key,)

    def __call__(self, identifier_type: str, value: str) -> str:
        """The subject id of one identifier; callers normalise the value first (case, whitespace)."""
        # The same people come back again and again: remembering recent answers saves two HMACs a message.
        found = self._recent.get((identifier_type, value))
        if found is None:
            if len(self._recent) >= _RECENT:
                self._recent.clear()
            found = self._recent[(identifier_type, value)] = subject_id(self._key, identifier_type, value)
        return found


def subject_id(secret: bytes, identifier_type: str, value: str) -> str:
    """Hex HMAC-SHA256 over a length-prefixed (domain, type, value) so no two inputs can alias."""
    if not identifier_type or not value:
        raise ValueError("identifier type and value must be non-empty")
    message = b"".join(_framed(part) for part in (_DOMAIN, identifier_type.encode(), value.encode()))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:SUBJECT_ID_HEX_CHARS]


def is_subject_id(text: str) -> bool:
    """Whether `text` has the shape of a subject id (lower-case hex of the right length)."""
    return bool(_SUBJECT_ID.match(text))


def check_subject_id(text: str) -> str:
    """`text` if it is a subject id; ValueError otherwise (guards against raw identifiers slipping in)."""
    if not is_subject_id(text):
        raise ValueError("not a subject id: expected 32 lower-case hex characters")
    return text


def _framed(part: bytes) -> bytes:
    """Length-prefix a part so `("ab", "c")` and `("a", "bc")` hash differently."""
    return len(part).to_bytes(4, "big") + part
