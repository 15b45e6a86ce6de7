"""Segments' integration tests run on both backends, with identity's fixture for them."""

from tests.integration.identity.conftest import backend

__all__ = ["backend"]
