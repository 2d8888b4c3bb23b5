"""Alembic environment of the study store.

At server start-up :func:`cerebrascan.store.migrations.upgrade_to_head` passes an open
connection in ``config.attributes["connection"]``. From the command line
(``alembic -c cerebrascan/store/alembic.ini ...``) the database is ``sqlalchemy.url`` if set,
else the store of the current settings (``CEREBRASCAN_STORE_URL`` / ``data_dir``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from cerebrascan.store.models import Base


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    from cerebrascan.settings import Settings
    from cerebrascan.store.records import create_store_engine

    url = context.config.get_main_option("sqlalchemy.url") or Settings().store_database_url
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            _migrate(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported by the study store")
_run()
