"""The secrets of an installation: given explicitly, or generated once under the data directory in development."""

from __future__ import annotations

from pathlib import Path

from cdp.keyring import generate_key_file
from cdp.runtime.settings import Settings, SettingsError


def ensure_local_secrets(settings: Settings) -> dict[str, str]:
    """The `CDP_*` variables that point services at this installation's master key and subject secret."""
    env: dict[str, str] = {}
    if not settings.master_key and settings.master_key_file is None:
        env["CDP_MASTER_KEY_FILE"] = str(_generated(settings, "master.key", "CDP_MASTER_KEY"))
    if not settings.subject_secret and settings.subject_secret_file is None:
        env["CDP_SUBJECT_SECRET_FILE"] = str(_generated(settings, "subject.secret", "CDP_SUBJECT_SECRET"))
    return env


def subject_secret(settings: Settings) -> str:
    """The HMAC secret for subject ids: the setting, else its file (generated in development)."""
    if settings.subject_secret:
        return settings.subject_secret
    path = settings.subject_secret_file or _generated(settings, "subject.secret", "CDP_SUBJECT_SECRET")
    try:
        return path.read_text().strip()
    except OSError as error:
        raise SettingsError(f"CDP_SUBJECT_SECRET_FILE: cannot read {path}: {error.strerror}") from error


def master_key_file(settings: Settings) -> Path | None:
    """Where the master key lives when it is not given inline (generated in development)."""
    if settings.master_key:
        return None
    return settings.master_key_file or _generated(settings, "master.key", "CDP_MASTER_KEY")


def _generated(settings: Settings, name: str, variable: str) -> Path:
    if settings.env == "production":
        raise SettingsError(f"{variable} or {variable}_FILE is required when CDP_ENV=production")
    path = settings.data_dir / name
    generate_key_file(path)  # 32 random bytes, base64, mode 0600; a file already there is kept
    return path
