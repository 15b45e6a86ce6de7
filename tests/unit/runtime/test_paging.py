from __future__ import annotations

import pytest

from cdp.errors import InvalidInput
from cdp.runtime import paging


def test_page_tokens_are_checked_and_sizes_clamped() -> None:
    token = paging.encode_token("profiles", "abc")
    assert paging.decode_token(token, "profiles") == "abc"
    with pytest.raises(InvalidInput, match="page_token"):
        paging.decode_token(token, "decisions")
    with pytest.raises(InvalidInput, match="page_token"):
        paging.decode_token("%%%", "profiles")
    assert paging.page_size(0) == 50 and paging.page_size(5000) == 1000
    with pytest.raises(InvalidInput, match="page_size"):
        paging.page_size(-1)
