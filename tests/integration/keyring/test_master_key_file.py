"""Master key files: generated 0600 for a local cluster, never generated in production."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cdp.keyring import MasterKeyError, generate_key_file, load_master_key


def test_local_cluster_generates_a_private_key_file_once(tmp_path: Path) -> None:
    path = tmp_path / "data" / "master.key"
    first = load_master_key(key_file=path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(key_file=path).current == first.current


def test_generate_leaves_an_existing_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    generate_key_file(path)
    before = path.read_text()
    generate_key_file(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]


def test_production_never_generates(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="production"):
        load_master_key(key_file=tmp_path / "missing.key", production=True)
    assert not (tmp_path / "missing.key").exists()


def test_production_refuses_a_world_readable_key_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    generate_key_file(path)
    path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        load_master_key(key_file=path, production=True)
    path.chmod(0o600)
    assert load_master_key(key_file=path, production=True).current.key_id
