"""A throwaway PostgreSQL cluster for the test session.

It runs PostgreSQL 15 from the machine image on a free loopback port, with
its data in a temporary folder, and is stopped when the session ends.
PostgreSQL refuses to run as root, so under root (as in CI) the cluster runs
as the image's ``postgres`` user. Set ``SWIM_AS_TEST_POSTGRES_URL`` (for
example ``postgresql+asyncpg://postgres@127.0.0.1:5432``) to use a server of
your own instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

CANDIDATE_BINS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14)]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries are installed."""


def _bin_dir() -> Path:
    for path in CANDIDATE_BINS:
        if (path / "initdb").exists():
            return path
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install "
        "postgresql-15 or set SWIM_AS_TEST_POSTGRES_URL"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Start a cluster; yield ``postgresql+asyncpg://postgres@127.0.0.1:PORT``."""
    existing = os.environ.get("SWIM_AS_TEST_POSTGRES_URL")
    if existing:
        yield existing.rstrip("/")
        return
    bin_dir = _bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="swim-as-pg-"))
    data = folder / "data"
    log = folder / "postgres.log"
    as_user: list[str] = []
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chmod(folder, 0o755)
        data.mkdir()
        log.touch()
        for path in (data, log):
            os.chown(path, pg.pw_uid, pg.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    try:
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {data} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=300",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
    except subprocess.CalledProcessError as err:
        output = (err.stdout or b"").decode() + (err.stderr or b"").decode()
        if log.exists():
            output += log.read_text(errors="replace")
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {output[-2000:]}") from err
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


async def create_database(server_url: str, prefix: str = "t") -> str:
    """Create an empty database on the cluster; return its SQLAlchemy URL."""
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    dsn = server_url.replace("postgresql+asyncpg://", "postgresql://") + "/postgres"
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return f"{server_url}/{name}"
