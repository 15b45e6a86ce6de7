"""Stream names: one place, `category-id`, never personal data."""

from __future__ import annotations

import pytest

from cdp.eventlog.port import stream_category
from cdp.events import streams

SUBJECT = "0123456789abcdef0123456789abcdef"


def test_names_have_the_category_before_the_first_dash() -> None:
    assert streams.subject_stream(SUBJECT) == f"subject-{SUBJECT}"
    assert stream_category(streams.audience_stream("3f2a-77")) == "audience"
    assert streams.config_stream("ingest") == "config-ingest"
    assert streams.request_stream("r-1") == "dsr-r-1"


@pytest.mark.parametrize("bad", ["jane@example.com", "Jane Doe", "", "x" * 129, "-leading"])
def test_ids_that_are_not_opaque_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        streams.profile_stream(bad)


def test_subject_streams_take_only_subject_ids() -> None:
    with pytest.raises(ValueError):
        streams.subject_stream("user-42")
    with pytest.raises(ValueError):
        streams.consent_stream("jane@example.com")


def test_unknown_service_has_no_config_stream() -> None:
    with pytest.raises(ValueError):
        streams.config_stream("billing")


def test_categories_contain_no_dash() -> None:
    categories = [value for name, value in vars(streams).items() if name.isupper() and isinstance(value, str)]
    assert categories and all("-" not in category for category in categories)
