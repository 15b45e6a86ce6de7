"""AIP-158 pagination shared by every service's edge: page sizes and opaque page tokens."""

from __future__ import annotations

import base64
import binascii

from cdp.errors import InvalidInput

DEFAULT_PAGE = 50
MAX_PAGE = 1000


def page_size(size: int, path: str = "page.page_size") -> int:
    """0 means the default; larger than the maximum is clamped; negative is refused."""
    if size < 0:
        raise InvalidInput.field(path, "must not be negative")
    return DEFAULT_PAGE if size == 0 else min(size, MAX_PAGE)


def encode_token(kind: str, value: str) -> str:
    """An opaque page token."""
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode()


def decode_token(token: str, kind: str, path: str = "page.page_token") -> str:
    """The value inside a token this service issued for this method."""
    if not token:
        return ""
    try:
        found_kind, value = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInput.field(path, "is not a token this service issued") from None
    if found_kind != kind:
        raise InvalidInput.field(path, "is not a token this service issued")
    return value
