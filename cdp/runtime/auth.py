"""Who may call what: write keys for collection, the admin token for governance and configuration."""

from __future__ import annotations

import base64
import contextvars
import enum
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cdp import errors


class Access(enum.Enum):
    """What a method requires of its caller."""

    PUBLIC = "public"
    WRITE_KEY = "write_key"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: an ingest source (by write key) or an administrator."""

    kind: Access
    source_id: str = ""

    @property
    def actor(self) -> str:
        """How events this caller causes name their actor (never a secret, never personal data)."""
        return "admin" if self.kind is Access.ADMIN else f"source:{self.source_id}"


ANONYMOUS = Principal(Access.PUBLIC)
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=ANONYMOUS)


class Authenticator:
    """Checks credentials against the configured write keys and admin token (constant-time comparisons)."""

    def __init__(self, source_keys: Sequence[tuple[str, str]], admin_token: str) -> None:
        self._source_keys = list(source_keys)
        self._admin_token = admin_token

    def principal_for(self, credential: str) -> Principal | None:
        """The principal a bare credential (write key or admin token) stands for, if any."""
        if credential and hmac.compare_digest(credential.encode(), self._admin_token.encode()):
            return Principal(Access.ADMIN)
        for source_id, key in self._source_keys:
            if credential and hmac.compare_digest(credential.encode(), key.encode()):
                return Principal(Access.WRITE_KEY, source_id)
        return None

    def authorize(self, required: Access, metadata: Mapping[str, str]) -> Principal:
        """The caller's principal when it may make a call requiring `required`; raise otherwise."""
        if required is Access.PUBLIC:
            return ANONYMOUS
        credential = credential_from_metadata(metadata)
        if credential is None:
            raise errors.Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        principal = self.principal_for(credential)
        if principal is None:
            raise errors.Unauthenticated("unknown credentials")
        if required is Access.ADMIN and principal.kind is not Access.ADMIN:
            raise errors.PermissionDenied("this call needs the admin token; a write key only sends data")
        # The admin may also send data (imports, backfills); it is then its own source.
        if required is Access.WRITE_KEY and principal.kind is Access.ADMIN:
            return Principal(Access.ADMIN, "admin")
        return principal


def credential_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """The token of `authorization: Bearer …` or the user name of `authorization: Basic …` (Segment's way)."""
    header = metadata.get("authorization", "").strip()
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None
