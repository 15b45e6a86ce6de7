import base64

import pytest

from cdp import errors
from cdp.runtime.auth import Access, Authenticator, credential_from_metadata

AUTH = Authenticator([("web", "wk-web"), ("ios", "wk-ios")], "admin-token")


def test_credentials_come_from_bearer_or_basic_user_name() -> None:
    basic = base64.b64encode(b"wk-web:").decode()
    assert credential_from_metadata({"authorization": "Bearer wk-web"}) == "wk-web"
    assert credential_from_metadata({"authorization": f"Basic {basic}"}) == "wk-web"
    assert credential_from_metadata({"authorization": "Basic !!notbase64"}) is None
    assert credential_from_metadata({}) is None


def test_a_write_key_names_its_source() -> None:
    principal = AUTH.authorize(Access.WRITE_KEY, {"authorization": "Bearer wk-ios"})
    assert principal.source_id == "ios"
    assert principal.actor == "source:ios"


def test_missing_or_unknown_credentials_are_unauthenticated() -> None:
    with pytest.raises(errors.Unauthenticated):
        AUTH.authorize(Access.WRITE_KEY, {})
    with pytest.raises(errors.Unauthenticated):
        AUTH.authorize(Access.ADMIN, {"authorization": "Bearer nope"})


def test_a_write_key_cannot_make_admin_calls() -> None:
    with pytest.raises(errors.PermissionDenied):
        AUTH.authorize(Access.ADMIN, {"authorization": "Bearer wk-web"})


def test_the_admin_may_send_data_and_public_calls_need_nothing() -> None:
    assert AUTH.authorize(Access.WRITE_KEY, {"authorization": "Bearer admin-token"}).kind is Access.ADMIN
    assert AUTH.authorize(Access.PUBLIC, {}).kind is Access.PUBLIC
