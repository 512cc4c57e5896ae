"""Helpers for lifecycle tests: the CLI as a subprocess, audit queries."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from swim_as.clients.admin import ClientAdmin
from swim_as.storage.models import AuditRow
from tests.support.harness import Running


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    """swim-as logs at INFO, as in production, so that every log call runs."""
    caplog.set_level(logging.INFO, logger="swim_as")


def cli_config(server: Running, folder: Path) -> Path:
    """A TOML file for `swim-as` administration commands on the server's DB."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cli.toml"
    path.write_text(
        f'issuer = "{server.issuer}"\n'
        f"[database]\n"
        f'url = "{server.settings.database.url}"\n'
        f"[tokens]\n"
        f'default_audience = "{server.settings.tokens.default_audience}"\n'
        f"[logging]\n"
        f'format = "text"\n'
    )
    return path


async def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``swim-as ARGS --config CONFIG`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIM_AS_")}
    env["USER"] = "test-operator"
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "swim_as.cli", *args, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class InProcessCli:
    """``swim-as`` in this process (faster than a child; same code path).

    Logging set-up is skipped so that it does not replace pytest's handlers.
    """

    def __init__(
        self,
        config: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        import swim_as.cli

        monkeypatch.setattr(swim_as.cli, "_setup_logging", lambda *a, **k: None)
        for name in [n for n in os.environ if n.startswith("SWIM_AS_")]:
            monkeypatch.delenv(name)
        self._config = config
        self._capsys = capsys

    async def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        from swim_as.cli import main

        self._capsys.readouterr()
        # main() runs its own event loop, so it runs in a thread.
        status = await asyncio.to_thread(main, [*args, "--config", str(self._config)])
        captured = self._capsys.readouterr()
        return subprocess.CompletedProcess(args, status, captured.out, captured.err)


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


async def audit_events(
    server: Running, *, client_id: str | None = None, prefix: str = ""
) -> list[AuditRow]:
    """Audit records (after flushing the hot-path buffer), oldest first."""
    await server.services.audit.flush()
    query = select(AuditRow).order_by(AuditRow.id)
    if client_id is not None:
        query = query.where(AuditRow.client_id == client_id)
    if prefix:
        query = query.where(AuditRow.event.startswith(prefix))
    async with server.services.db.reading() as session:
        return list((await session.scalars(query)).all())


def admin(server: Running, actor: str = "operator:test") -> ClientAdmin:
    s = server.services
    return ClientAdmin(
        s.db,
        s.clients,
        s.registration,
        s.clock,
        enabled_methods=frozenset({"tls_client_auth", "spiffe_x509"}),
        actor=actor,
    )
