"""Schema migrations of the study store, run at start-up (``alembic upgrade head``)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

logger = logging.getLogger(__name__)

ALEMBIC_DIR = Path(__file__).resolve().parent / "alembic"
MIGRATION_LOCK_ID = 0x43534E53
"""PostgreSQL advisory lock held while migrating, so servers starting together take turns."""


def alembic_config() -> Config:
    """An alembic configuration pointing at the store's revisions."""
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    return config


def head_revision() -> str:
    """The newest revision id."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no alembic revisions under {ALEMBIC_DIR}")
    return head


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database of ``engine`` to ``revision`` in one transaction.

    On PostgreSQL an advisory lock serialises concurrent start-ups; on SQLite the store's
    ``BEGIN IMMEDIATE`` does.
    """
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    logger.info("study store schema at revision %s", revision)
