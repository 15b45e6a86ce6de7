"""Typed settings, parsed once at start-up from `CDP_*` environment variables.

Nothing else in the code base reads the environment: a composition root calls `Settings.from_env()` and passes
the object (or the values it needs) down.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

SERVICES = ("ingest", "identity", "segments", "activation", "governance")

DEFAULT_PORTS: Mapping[str, int] = {
    "ingest": 50051,
    "identity": 50052,
    "segments": 50053,
    "activation": 50054,
    "governance": 50055,
}

DEV_WRITE_KEY = "dev-write-key"
DEV_ADMIN_TOKEN = "dev-admin-token"

# Segment accepts 500 KB per batch; leave room for protobuf framing and gRPC metadata.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


_SOURCE_ID = re.compile(r"^[A-Za-z0-9_.]{1,64}$")

DEFAULT_CONSENT_PURPOSES = (
    "analytics",
    "advertising",
    "marketing",
    "personalization",
    "functional",
    "sale_of_data",
)
DEFAULT_CONSENT_REGIMES: Mapping[str, str] = {
    "eu": "opt_in",
    "uk": "opt_in",
    "br": "opt_in",
    "us": "opt_out",
    "us-ca": "opt_out",
}
CONSENT_REGIMES = ("opt_in", "opt_out")
_PURPOSE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_JURISDICTION = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the platform. Each field maps to `CDP_<FIELD NAME IN UPPER CASE>`."""

    env: Literal["development", "production"] = "development"
    """`production` refuses the development write key, admin token and generated master key."""

    data_dir: Path = Path("data")
    """Where the embedded default keeps its SQLite files, logs and generated keys."""

    host: str = "127.0.0.1"
    """The address every gRPC and HTTP server binds."""

    ingest_port: int = DEFAULT_PORTS["ingest"]
    """gRPC port of the ingest service."""

    identity_port: int = DEFAULT_PORTS["identity"]
    """gRPC port of the identity service."""

    segments_port: int = DEFAULT_PORTS["segments"]
    """gRPC port of the segments service."""

    activation_port: int = DEFAULT_PORTS["activation"]
    """gRPC port of the activation service."""

    governance_port: int = DEFAULT_PORTS["governance"]
    """gRPC port of the governance service."""

    http_port: int = 8088
    """Port of ingest's Segment-compatible HTTP API."""

    event_store: str = ""
    """The event log: `sqlite:///data/events.db` (default), `postgresql://…`, `kurrentdb://host:2113?tls=false`."""

    read_model_url: str = ""
    """SQLAlchemy URL of a service's read models; `{service}` is replaced by the service name."""

    keyring_url: str = ""
    """SQLAlchemy URL of the keyring database (data keys live apart from the log)."""

    master_key: str = ""
    """Base64 master key wrapping every data key; required in production."""

    master_key_file: Path | None = None
    """A file holding the master key; the local cluster generates one under `data_dir`."""

    subject_secret: str = ""
    """HMAC secret that turns identifiers into subject ids; required in production."""

    subject_secret_file: Path | None = None
    """A file holding the subject secret; the local cluster generates one under `data_dir`."""

    write_keys: tuple[str, ...] = (f"dev:{DEV_WRITE_KEY}",)
    """Write keys accepted by ingest, comma-separated; `source_id:key` names the source."""

    admin_token: str = DEV_ADMIN_TOKEN
    """Bearer token for governance and configuration calls."""

    log_level: str = "info"
    """Minimum log level: debug, info, warning, error."""

    log_format: Literal["auto", "json", "console"] = "auto"
    """`auto`: pretty on a terminal, JSON otherwise."""

    grace_seconds: float = 5.0
    """How long in-flight calls may finish after SIGTERM/SIGINT."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest gRPC message accepted or sent."""

    dependency_timeout_seconds: float = 2.0
    """How long a call waits for a database that does not answer (a pooled connection, a new connection, an
    unacknowledged send) before it fails as UNAVAILABLE / 503 with Retry-After; also the bound on each health
    probe of the event log and read models."""

    consent_purposes: tuple[str, ...] = DEFAULT_CONSENT_PURPOSES
    """The consent purposes governance answers for (lower_snake_case, comma-separated): each gets its
    jurisdiction's default until a decision is recorded, and SetConsent accepts only these."""

    consent_default_jurisdiction: str = "eu"
    """The jurisdiction of a decision or question that names none; must be one of `consent_regimes`."""

    consent_regimes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CONSENT_REGIMES))
    """`jurisdiction:regime` pairs, comma-separated (`eu:opt_in,us:opt_out`): `opt_in` denies a purpose until it
    is granted, `opt_out` grants it until it is denied."""

    erasure_purgers: tuple[str, ...] = ("ingest", "identity", "segments")
    """The services an erasure waits for (each confirms it forgot the person with `ReadModelPurged`) before the
    log is erased and the request completes; comma-separated service names."""

    extra: Mapping[str, str] = field(default_factory=dict)
    """Unrecognised `CDP_*` variables, kept so a typo can be reported rather than silently ignored."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse `CDP_*` variables (default: the process environment) and validate them."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        known = {f.name for f in fields(cls)} - {"extra"}
        extra: dict[str, str] = {}
        for key, raw in environ.items():
            if not key.startswith("CDP_") or key.startswith("CDP_TEST_"):
                continue
            name = key[4:].lower()
            if name not in known:
                extra[key] = raw
                continue
            values[name] = _parse(name, raw)
        return cls(**values, extra=extra).resolved()  # type: ignore[arg-type]

    def resolved(self) -> Settings:
        """Fill the defaults that depend on other settings, then validate."""
        settings = replace(
            self,
            event_store=self.event_store or f"sqlite:///{self.data_dir / 'events.db'}",
            read_model_url=self.read_model_url or f"sqlite:///{self.data_dir / '{service}.db'}",
            keyring_url=self.keyring_url or f"sqlite:///{self.data_dir / 'keyring.db'}",
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse combinations that would be unsafe or cannot work."""
        if self.env == "production":
            if self.admin_token == DEV_ADMIN_TOKEN:
                raise SettingsError(
                    "CDP_ADMIN_TOKEN: the development token is refused when CDP_ENV=production"
                )
            if any(key == DEV_WRITE_KEY for _, key in self.source_keys()):
                raise SettingsError(
                    "CDP_WRITE_KEYS: the development write key is refused when CDP_ENV=production"
                )
            if not self.master_key and self.master_key_file is None:
                raise SettingsError(
                    "CDP_MASTER_KEY or CDP_MASTER_KEY_FILE is required when CDP_ENV=production"
                )
            if not self.subject_secret and self.subject_secret_file is None:
                raise SettingsError(
                    "CDP_SUBJECT_SECRET or CDP_SUBJECT_SECRET_FILE is required when CDP_ENV=production"
                )
        if not self.write_keys:
            raise SettingsError("CDP_WRITE_KEYS: at least one write key is needed")
        for source, key in self.source_keys():
            if not _SOURCE_ID.match(source) or not key:
                raise SettingsError(
                    f"CDP_WRITE_KEYS: {source!r} is not a source id (letters, digits, _ and ., at most 64) "
                    "or its key is empty"
                )
        for port_name in (
            "ingest_port",
            "identity_port",
            "segments_port",
            "activation_port",
            "governance_port",
        ):
            port = getattr(self, port_name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"CDP_{port_name.upper()}: {port} is not a TCP port")
        if not 0.1 <= self.dependency_timeout_seconds <= 300:  # NaN fails both comparisons
            raise SettingsError(
                f"CDP_DEPENDENCY_TIMEOUT_SECONDS: {self.dependency_timeout_seconds} is not between 0.1 and 300"
            )
        self._validate_consent()

    def _validate_consent(self) -> None:
        bad = [p for p in self.consent_purposes if not _PURPOSE.match(p)]
        if bad or not self.consent_purposes:
            raise SettingsError(
                f"CDP_CONSENT_PURPOSES: {bad or 'nothing'} refused (lower_snake_case names, at least one)"
            )
        for jurisdiction, regime in self.consent_regimes.items():
            if not _JURISDICTION.match(jurisdiction) or regime not in CONSENT_REGIMES:
                raise SettingsError(
                    f"CDP_CONSENT_REGIMES: {jurisdiction}:{regime} refused "
                    "(jurisdiction: lowercase letters, digits and -; regime: opt_in or opt_out)"
                )
        unknown = [s for s in self.erasure_purgers if s not in SERVICES or s == "governance"]
        if unknown:
            raise SettingsError(
                f"CDP_ERASURE_PURGERS: {unknown} refused (services that hold read models: "
                "ingest, identity, segments, activation)"
            )
        if self.consent_default_jurisdiction not in self.consent_regimes:
            raise SettingsError(
                f"CDP_CONSENT_DEFAULT_JURISDICTION: {self.consent_default_jurisdiction!r} has no regime in "
                f"CDP_CONSENT_REGIMES ({', '.join(sorted(self.consent_regimes))})"
            )

    def port_of(self, service: str) -> int:
        """The gRPC port a service listens on."""
        if service not in SERVICES:
            raise KeyError(service)
        return int(getattr(self, f"{service}_port"))

    def read_model_url_for(self, service: str) -> str:
        """The read-model database URL of one service."""
        return self.read_model_url.replace("{service}", service)

    def source_keys(self) -> list[tuple[str, str]]:
        """`(source id, write key)` pairs; a bare key gets a source id derived from its hash (keys are secrets)."""
        pairs = []
        for item in self.write_keys:
            source, sep, key = item.partition(":")
            pairs.append(
                (source, key) if sep else (f"key_{hashlib.sha256(item.encode()).hexdigest()[:8]}", item)
            )
        return pairs


def _parse(name: str, raw: str) -> object:
    """Convert one variable to its field's type, naming the variable when it cannot."""
    variable = f"CDP_{name.upper()}"
    try:
        if name.endswith("_port") or name == "max_message_bytes":
            return int(raw)
        if name in ("grace_seconds", "dependency_timeout_seconds"):
            return float(raw)
        if name in ("data_dir", "master_key_file", "subject_secret_file"):
            return Path(raw)
        if name in ("write_keys", "consent_purposes", "erasure_purgers"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if name == "consent_regimes":
            return _pairs(raw)
    except ValueError as error:
        raise SettingsError(f"{variable}: {raw!r} is not valid ({error})") from error
    if name == "env" and raw not in ("development", "production"):
        raise SettingsError(f"{variable}: expected 'development' or 'production', got {raw!r}")
    if name == "log_format" and raw not in ("auto", "json", "console"):
        raise SettingsError(f"{variable}: expected 'auto', 'json' or 'console', got {raw!r}")
    return raw


def _pairs(raw: str) -> dict[str, str]:
    """`a:x,b:y` → {"a": "x", "b": "y"}; ValueError for an item without a colon or a repeated key."""
    pairs: dict[str, str] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, sep, value = item.partition(":")
        if not sep or key.strip() in pairs:
            raise ValueError(f"{item!r} is not a new `key:value` pair")
        pairs[key.strip()] = value.strip()
    return pairs
