"""A swim-as serving on PostgreSQL for a test module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.harness import Running, TestPki, running_server
from tests.support.postgres import create_database


@pytest.fixture(scope="module")
async def server(
    postgres_server: str, pki: TestPki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    url = await create_database(postgres_server)
    folder: Path = tmp_path_factory.mktemp("server")
    async with running_server(pki, url, folder) as running:
        yield running
