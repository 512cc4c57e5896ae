"""Session fixtures: the throwaway PostgreSQL cluster and the test PKI.

The database, TLS and certificates in these tests are real (STYLE.md §3.8):
PostgreSQL runs as a throwaway cluster for the session, certificates are
made here, and servers listen on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.harness import TestPki
from tests.support.pki import Authority
from tests.support.postgres import create_database, throwaway_cluster


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of the session's PostgreSQL server (no database name)."""
    with throwaway_cluster() as url:
        yield url


@pytest.fixture
async def pg_url(postgres_server: str) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return await create_database(postgres_server)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'swim-as.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'swim-as.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        yield await create_database(server)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A web CA with a server certificate, and two SPIFFE trust domains."""
    folder = tmp_path_factory.mktemp("pki")
    web = Authority(folder / "web", "web", None)
    server = web.issue("server", dns=["localhost"], ips=["127.0.0.1"])
    return TestPki(
        folder=folder,
        web=web,
        server=server,
        example=Authority(folder / "example", "example", "example.org"),
        other=Authority(folder / "other", "other", "other.org"),
    )
