"""Subject ids: stable, keyed, domain-separated, safe in stream names."""

from __future__ import annotations

import pickle

import pytest

from cdp.keyring import SubjectIds, check_subject_id, is_subject_id

IDS = SubjectIds("unit-test-subject-secret-0123456789")


def test_stable_and_shaped_like_a_subject_id() -> None:
    assert IDS("email", "jane@example.com") == IDS("email", "jane@example.com")
    assert is_subject_id(IDS("email", "jane@example.com"))


def test_depends_on_the_secret() -> None:
    other = SubjectIds("another-secret-entirely-0123456789")
    assert IDS("email", "jane@example.com") != other("email", "jane@example.com")


def test_identifier_type_is_domain_separated() -> None:
    assert IDS("email", "jane") != IDS("user_id", "jane")
    assert IDS("ab", "c") != IDS("a", "bc")


def test_reveals_nothing_of_the_value() -> None:
    assert "jane" not in IDS("email", "jane@example.com")


def test_refuses_short_secrets_and_empty_values() -> None:
    with pytest.raises(ValueError):
        SubjectIds("short")
    with pytest.raises(ValueError):
        IDS("email", "")


def test_check_subject_id_rejects_raw_identifiers() -> None:
    with pytest.raises(ValueError):
        check_subject_id("jane@example.com")
    assert check_subject_id("0" * 32) == "0" * 32


def test_pickles_as_its_secret_without_the_values_it_remembers() -> None:
    ids = SubjectIds("unit-test-subject-secret-0123456789")
    answer = ids("email", "jane@example.com")
    copy = pickle.loads(pickle.dumps(ids))
    assert b"jane" not in pickle.dumps(ids)
    assert copy("email", "jane@example.com") == answer
