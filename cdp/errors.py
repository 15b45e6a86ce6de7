"""Errors the domain and use cases raise; they know nothing of gRPC or HTTP.

Each edge (gRPC in `cdp.runtime.errors`, HTTP in ingest) maps them to its status codes in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: its path in the request (`batch[3].messageId`) and why."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error meant to reach a caller."""


class InvalidInput(DomainError):
    """The request is malformed; the violations name each bad field."""

    def __init__(
        self, violations: Iterable[FieldViolation] | FieldViolation, *, reason: str | None = None
    ) -> None:
        self.violations = [violations] if isinstance(violations, FieldViolation) else list(violations)
        self.reason = reason
        """A machine-readable classification (`REJECTION_REASON_MISSING_FIELD`), sent as google.rpc.ErrorInfo."""
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def field(cls, field: str, description: str) -> InvalidInput:
        """An error about a single field."""
        return cls(FieldViolation(field, description))


class NotFound(DomainError):
    """What the request names does not exist."""


class AlreadyExists(DomainError):
    """What the request would create exists already."""


class Conflict(DomainError):
    """The request lost a race or contradicts the current state; retrying after a re-read may succeed."""


class Unauthenticated(DomainError):
    """No credentials, or credentials nobody recognises."""


class PermissionDenied(DomainError):
    """Valid credentials that do not allow this call."""


class ResourceExhausted(DomainError):
    """A limit was reached (size, rate); `retry_after` seconds may help."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


RETRY_AFTER_SECONDS = 2.0
"""What an outage tells callers to wait before retrying: long enough for a pool to reconnect, short enough
that a retrying SDK catches up quickly once the dependency is back."""


class Unavailable(DomainError):
    """A dependency is down or busy for now; the caller may retry after `retry_after` seconds, with backoff."""

    def __init__(self, message: str, retry_after: float = RETRY_AFTER_SECONDS) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class DeadlineExceeded(DomainError):
    """An operation gave up waiting on a dependency; it may have taken effect, so retry only idempotent calls."""


class NotBuiltYet(DomainError):
    """A capability a later issue builds; the only placeholder allowed, removed by that issue."""

    def __init__(self, capability: str) -> None:
        self.capability = capability
        super().__init__(f"not implemented yet: {capability}")
