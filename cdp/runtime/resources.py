"""Adapters every composition root opens from the settings: the event log, the keyring, read-model databases."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from sqlalchemy import Engine

from cdp.eventlog import EventStore, open_event_store
from cdp.keyring import Keyring, SubjectIds, load_master_key, open_keyring
from cdp.runtime.readiness import Probe
from cdp.runtime.secrets import master_key_file, subject_secret
from cdp.runtime.settings import Settings
from cdp.sqlengine import create_read_model_engine, ping


def event_store(settings: Settings) -> EventStore:
    """The shared event log `CDP_EVENT_STORE` names."""
    return open_event_store(settings.event_store, timeout=settings.dependency_timeout_seconds)


def keyring(settings: Settings) -> Keyring:
    """The keyring in `CDP_KEYRING_URL`, its data keys wrapped by the installation's master key."""
    master = load_master_key(
        settings.master_key, master_key_file(settings), production=settings.env == "production"
    )
    # Room for the keys of every person active in the last minute on a busy installation (~300 B each).
    return open_keyring(
        settings.keyring_url, master, cache_size=100_000, timeout=settings.dependency_timeout_seconds
    )


def subject_ids(settings: Settings) -> SubjectIds:
    """Identifier → subject id (keyed hash), the same in every service of the installation."""
    return SubjectIds(subject_secret(settings))


def read_model_engine(settings: Settings, service: str) -> Engine:
    """The SQLAlchemy engine of one service's read models (`CDP_READ_MODEL_URL`)."""
    return create_read_model_engine(
        settings.read_model_url_for(service), timeout=settings.dependency_timeout_seconds
    )


def dependencies(store: EventStore, engine: Engine) -> Mapping[str, Probe]:
    """The health probes of a service that follows the log into a read model: a cheap read of each."""

    async def read_model() -> None:
        await asyncio.to_thread(ping, engine)

    return {"event log": store.head_position, "read model": read_model}
