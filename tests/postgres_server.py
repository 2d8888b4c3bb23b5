"""A throw-away PostgreSQL server for the tests: Debian's ``initdb``/``pg_ctl`` in a temp folder.

The server listens only on a unix socket in its own temporary folder (no TCP port, so no clash
with any other server), runs with ``fsync=off``, and is stopped and deleted at the end of the
session. As root it runs as the ``postgres`` system user (``initdb`` refuses root). Set
``CEREBRASCAN_TEST_POSTGRES_URL`` to use an existing server instead (its tables are replaced).
``make postgres-server`` installs the binaries on Debian when run as root.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

URL_ENV = "CEREBRASCAN_TEST_POSTGRES_URL"
SERVER_USER = "postgres"
DATABASE = "cerebrascan_test"


class PostgresUnavailableError(RuntimeError):
    """The PostgreSQL server binaries or the user to run them as are missing."""


def find_bindir() -> Path:
    """Folder holding ``initdb`` and ``pg_ctl`` (newest Debian version, else ``PATH``).

    Raises:
        PostgresUnavailableError: not installed.
    """
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresUnavailableError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
        f"or on PATH: run `make postgres-server` as root (Debian: apt-get install postgresql) "
        f"or set {URL_ENV} to a server the tests may use"
    )


def _runner_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresUnavailableError(
            f"running as root, but there is no {SERVER_USER!r} user to run initdb as "
            "(Debian's postgresql package creates it)"
        ) from None
    return ["runuser", "-u", SERVER_USER, "--"]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {done.returncode}: {done.stderr[-2000:]}"
        )


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a private PostgreSQL server; yield a ``postgresql+psycopg://`` URL to a database.

    Raises:
        PostgresUnavailableError: the binaries or the ``postgres`` user are missing.
    """
    existing = os.environ.get(URL_ENV)
    if existing:
        yield existing
        return
    bindir = find_bindir()
    prefix = _runner_prefix()
    root = Path(tempfile.mkdtemp(prefix="cerebrascan-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if prefix:
        entry = pwd.getpwnam(SERVER_USER)
        for path in (root, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    started = False
    try:
        _run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "cerebrascan",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ]
        )
        options = f"-k {sockets} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        _run(
            [
                *prefix,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(root / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        started = True
        _run([*prefix, str(bindir / "createdb"), "-h", str(sockets), "-U", "cerebrascan", DATABASE])
        yield f"postgresql+psycopg://cerebrascan@/{DATABASE}?host={sockets}"
    finally:
        if started:
            try:
                _run(
                    [
                        *prefix,
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ]
                )
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                logger.warning("could not stop the test PostgreSQL server: %s", exc)
        shutil.rmtree(root, ignore_errors=True)
