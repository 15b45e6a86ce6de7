from pathlib import Path

import pytest

from cdp.runtime.settings import DEV_ADMIN_TOKEN, Settings, SettingsError


def test_defaults_are_the_embedded_local_installation() -> None:
    settings = Settings.from_env({})
    assert settings.event_store == "sqlite:///data/events.db"
    assert settings.read_model_url_for("identity") == "sqlite:///data/identity.db"
    assert settings.keyring_url == "sqlite:///data/keyring.db"
    assert [settings.port_of(name) for name in ("ingest", "governance")] == [50051, 50055]
    assert settings.http_port == 8088


def test_variables_are_parsed_into_their_types() -> None:
    settings = Settings.from_env(
        {
            "CDP_DATA_DIR": "/tmp/x",
            "CDP_INGEST_PORT": "6000",
            "CDP_GRACE_SECONDS": "1.5",
            "CDP_WRITE_KEYS": "web:abc, ios:def ,raw",
            "PATH": "/bin",
        }
    )
    assert settings.data_dir == Path("/tmp/x")
    assert settings.event_store == "sqlite:////tmp/x/events.db"
    assert settings.ingest_port == 6000
    assert settings.grace_seconds == 1.5
    sources = settings.source_keys()
    assert sources[:2] == [("web", "abc"), ("ios", "def")]
    assert sources[2][1] == "raw" and sources[2][0].startswith("key_"), (
        "a bare key never becomes its source id"
    )


def test_a_malformed_value_names_its_variable() -> None:
    with pytest.raises(SettingsError, match="CDP_INGEST_PORT"):
        Settings.from_env({"CDP_INGEST_PORT": "fifty"})
    with pytest.raises(SettingsError, match="CDP_ENV"):
        Settings.from_env({"CDP_ENV": "staging"})
    with pytest.raises(SettingsError, match="CDP_IDENTITY_PORT"):
        Settings.from_env({"CDP_IDENTITY_PORT": "70000"})


def test_unknown_variables_are_kept_to_be_reported() -> None:
    settings = Settings.from_env({"CDP_INGEST_PROT": "1", "CDP_TEST_POSTGRES": "x"})
    assert settings.extra == {"CDP_INGEST_PROT": "1"}


def test_production_refuses_development_credentials_and_missing_secrets() -> None:
    production = {
        "CDP_ENV": "production",
        "CDP_ADMIN_TOKEN": "s3cret-admin",
        "CDP_WRITE_KEYS": "web:k1",
        "CDP_MASTER_KEY": "a2V5",
        "CDP_SUBJECT_SECRET": "c2VjcmV0",
    }
    assert Settings.from_env(production).env == "production"
    with pytest.raises(SettingsError, match="CDP_ADMIN_TOKEN"):
        Settings.from_env({**production, "CDP_ADMIN_TOKEN": DEV_ADMIN_TOKEN})
    with pytest.raises(SettingsError, match="CDP_WRITE_KEYS"):
        Settings.from_env({**production, "CDP_WRITE_KEYS": "web:dev-write-key"})
    without_key = {k: v for k, v in production.items() if k != "CDP_MASTER_KEY"}
    with pytest.raises(SettingsError, match="CDP_MASTER_KEY"):
        Settings.from_env(without_key)
    without_secret = {k: v for k, v in production.items() if k != "CDP_SUBJECT_SECRET"}
    with pytest.raises(SettingsError, match="CDP_SUBJECT_SECRET"):
        Settings.from_env(without_secret)


def test_source_ids_must_be_safe_to_record() -> None:
    with pytest.raises(SettingsError, match="CDP_WRITE_KEYS"):
        Settings.from_env({"CDP_WRITE_KEYS": "my web:abc"})
    with pytest.raises(SettingsError, match="CDP_WRITE_KEYS"):
        Settings.from_env({"CDP_WRITE_KEYS": "web:"})
