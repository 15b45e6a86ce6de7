"""`cdp.sqlengine.scrub` on a real SQLite file: deleted rows leave no bytes behind, a reader holding an old
snapshot makes it report (and log) that it could not finish, and it finishes once the reader is gone."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from structlog.testing import capture_logs

from cdp.sqlengine import checkpoint_wal, create_read_model_engine, create_tables, read_only, scrub

metadata = MetaData()
notes = Table(
    "notes", metadata, Column("id", Integer, primary_key=True), Column("body", String, nullable=False)
)
SECRET = b"Quillfeather-secret-7731"


def test_deleted_rows_are_gone_from_the_file_and_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "model.db"
    engine = create_read_model_engine(f"sqlite:///{path}")
    try:
        create_tables(metadata, engine)
        with engine.begin() as connection:
            connection.execute(insert(notes), [{"body": f"{SECRET.decode()} {n}"} for n in range(50)])
            connection.execute(insert(notes), [{"body": f"kept {n}"} for n in range(50)])
        assert checkpoint_wal(engine)
        assert SECRET in path.read_bytes()
        with engine.begin() as connection:
            connection.execute(notes.delete().where(notes.c.body.like(f"{SECRET.decode()}%")))
        assert scrub(engine, [notes])
        files = [p for p in tmp_path.iterdir() if p.name.startswith("model.db")]
        assert [p.name for p in files if SECRET in p.read_bytes()] == []
        assert (tmp_path / "model.db-wal").stat().st_size == 0
        with read_only(engine).connect() as connection:
            assert len(connection.execute(select(notes)).all()) == 50
    finally:
        engine.dispose()


def test_a_reader_on_an_old_snapshot_holds_the_checkpoint_off_until_it_is_gone(tmp_path: Path) -> None:
    engine = create_read_model_engine(f"sqlite:///{tmp_path / 'model.db'}")
    try:
        create_tables(metadata, engine)
        with engine.begin() as connection:
            connection.execute(insert(notes).values(body="first"))
        with read_only(engine).connect() as reader:
            reader.execute(select(notes)).all()  # the reader's snapshot stays open until the block ends
            with engine.begin() as connection:
                connection.execute(insert(notes).values(body="second"))
            with capture_logs() as logs:
                assert not checkpoint_wal(engine, attempts=2, pause=0.0, busy_ms=1)
            assert [entry["event"] for entry in logs] == ["sqlite_wal_checkpoint_incomplete"]
        assert checkpoint_wal(engine)
        assert (tmp_path / "model.db-wal").stat().st_size == 0
    finally:
        engine.dispose()
