"""Where each reactor's position lives: one row per reactor, in the database of the read model it keeps."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, exc, select
from sqlalchemy.orm import Session

from cdp.eventlog.port import START
from cdp.sqlengine import create_tables

checkpoint_metadata = MetaData()
checkpoints = Table(
    "projection_checkpoints",  # the name predates reactors; kept so existing read models keep their positions
    checkpoint_metadata,
    Column("name", String(200), primary_key=True),
    Column("position", BigInteger, nullable=False),
)


class CheckpointConflict(Exception):
    """Another runner moved this reactor's checkpoint: two runners must not share one reactor's read model."""


def load_checkpoint(engine: Engine, name: str) -> int:
    """The stored position of reactor `name`, creating the table and the row (at START) when missing."""
    create_tables(checkpoint_metadata, engine)
    for _ in range(2):
        try:
            with Session(engine) as session, session.begin():
                position = session.scalar(select(checkpoints.c.position).where(checkpoints.c.name == name))
                if position is None:
                    session.execute(checkpoints.insert().values(name=name, position=START))
                    return START
                return int(position)
        except exc.IntegrityError:  # another runner created the row at the same moment: read it
            continue
    raise CheckpointConflict(f"checkpoint of {name} could not be read or created")


def move_checkpoint(session: Session, name: str, expected: int, position: int) -> None:
    """Move the checkpoint from `expected` to `position` in the caller's transaction, or raise a conflict."""
    moved = session.execute(
        checkpoints.update()
        .where(checkpoints.c.name == name, checkpoints.c.position == expected)
        .values(position=position)
    )
    if getattr(moved, "rowcount", 1) != 1:
        raise CheckpointConflict(f"checkpoint of {name} moved under this runner")


def write_checkpoint(session: Session, name: str, position: int) -> None:
    """Set the checkpoint whatever it was (a rebuild that replayed the log up to `position`)."""
    session.execute(checkpoints.delete().where(checkpoints.c.name == name))
    session.execute(checkpoints.insert().values(name=name, position=position))
