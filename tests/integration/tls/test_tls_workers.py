"""``swim_as.server.run`` as a real process tree: one socket bound by the
parent, worker processes that each build their own app and TLS contexts,
graceful stop on SIGTERM, restart of a worker that dies.

Each test starts ``tls_worker_app.py`` on 127.0.0.1 and stops it, bounded in
time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import swim_as.server

HERE = Path(__file__).parent
REPO = Path(swim_as.server.__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    def __init__(
        self, pki: Any, workers: int, log: Path, *, second: bool = False
    ) -> None:
        self.port = _free_port()
        self.second_port = _free_port() if second else None
        self.log = log
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]))
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "tls_worker_app.py"),
                str(self.port),
                str(workers),
                str(pki.server.cert_file),
                str(pki.server.key_file),
                str(pki.root_a.cert_file),
                *([str(self.second_port)] if second else []),
            ],
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_server(pki, tmp_path):
    started: list[ServerProcess] = []

    def start(workers: int, second: bool = False) -> ServerProcess:
        server = ServerProcess(
            pki, workers, tmp_path / f"server-{len(started)}.log", second=second
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def _pid(client: Any, port: int, path: str = "/") -> int:
    connection = await client.open(port, client.context(client.pki.leaf_a))
    try:
        response = await connection.get(path)
    finally:
        await connection.close()
    assert response.json()["chain"] == 2
    return int(response.json()["pid"])


async def _wait_until_serving(
    client: Any, server: ServerProcess, seconds: float = 30
) -> int:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await _pid(client, server.port)
        except (OSError, asyncio.IncompleteReadError):
            if server.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start:\n{server.output()}")
            await asyncio.sleep(0.1)


async def _pids_until(
    client: Any,
    port: int,
    done: Callable[[set[int]], object],
    attempts: int = 300,
    seconds: float = 30.0,
) -> set[int]:
    """Ask for the serving pid on new connections until ``done(pids)``."""
    pids: set[int] = set()
    deadline = time.monotonic() + seconds
    for _ in range(attempts):
        try:
            pids.add(await _pid(client, port))
        except (OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.05)
        if done(pids) or time.monotonic() > deadline:
            break
    return pids


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


async def test_single_process_finishes_the_request_in_flight_on_sigterm(
    start_server, client
):
    server = start_server(1)
    pid = await _wait_until_serving(client, server)
    assert pid == server.process.pid

    slow = asyncio.create_task(_pid(client, server.port, "/slow"))
    await asyncio.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)

    assert await slow == pid
    assert await asyncio.to_thread(server.stop) == 0, server.output()


async def test_two_workers_serve_restart_and_stop(start_server, client):
    server = start_server(2)
    await _wait_until_serving(client, server)

    workers = await _pids_until(client, server.port, lambda pids: len(pids) == 2)
    assert len(workers) == 2, server.output()
    assert server.process.pid not in workers

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    assert _gone(victim)
    after = await _pids_until(client, server.port, lambda pids: pids - workers)
    replacement = after - workers
    assert len(replacement) == 1, server.output()
    assert victim not in after

    code = await asyncio.to_thread(server.stop)
    assert code == 0, server.output()
    for pid in workers - {victim} | replacement:
        assert _gone(pid), f"worker {pid} still running"
    assert "restarting it" in server.output()


async def test_two_listeners_in_every_worker(start_server, client):
    """A second listener (RFC 8705 §5 aliases) is served by the same worker
    processes, with its own TLS contexts, and stops with them."""
    server = start_server(2, second=True)
    await _wait_until_serving(client, server)
    assert server.second_port is not None

    for port in (server.port, server.second_port):
        connection = await client.open(port, client.context(client.pki.leaf_a))
        try:
            response = await connection.get("/")
        finally:
            await connection.close()
        body = response.json()
        assert body["port"] == port and body["chain"] == 2
        assert body["pid"] != server.process.pid

    both = await _pids_until(client, server.second_port, lambda pids: len(pids) == 2)
    assert len(both) == 2, server.output()
    code = await asyncio.to_thread(server.stop)
    assert code == 0, server.output()
    for pid in both:
        assert _gone(pid), f"worker {pid} still running"
