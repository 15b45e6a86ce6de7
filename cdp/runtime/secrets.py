"""The secrets of a development installation: generated once under the data directory, never in production."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cdp.runtime.settings import Settings, SettingsError


def ensure_secret_file(path: Path, n_bytes: int = 32) -> Path:
    """Create `path` holding a random base64 secret (mode 0600) unless it exists; safe when raced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(secrets.token_bytes(n_bytes)).decode() + "\n")
    return path


def ensure_local_secrets(settings: Settings) -> dict[str, str]:
    """The `CDP_*` variables that point services at the master key and subject secret of this installation."""
    env: dict[str, str] = {}
    if not settings.master_key and settings.master_key_file is None:
        if settings.env == "production":
            raise SettingsError("CDP_MASTER_KEY or CDP_MASTER_KEY_FILE is required when CDP_ENV=production")
        env["CDP_MASTER_KEY_FILE"] = str(ensure_secret_file(settings.data_dir / "master.key"))
    if not settings.subject_secret and settings.subject_secret_file is None:
        if settings.env == "production":
            raise SettingsError("CDP_SUBJECT_SECRET is required when CDP_ENV=production")
        env["CDP_SUBJECT_SECRET_FILE"] = str(ensure_secret_file(settings.data_dir / "subject.secret"))
    return env


def read_secret(value: str, file: Path | None, what: str) -> bytes:
    """A secret given inline (base64) or in a file (base64 text); raises naming the setting when absent."""
    text = value or (file.read_text().strip() if file is not None else "")
    if not text:
        raise SettingsError(f"{what} is not set")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as error:
        raise SettingsError(f"{what}: not valid base64") from error
