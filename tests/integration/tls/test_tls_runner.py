"""The runner's own edges: start-up failures, the listening socket, what
``run`` refuses before it binds anything."""

from __future__ import annotations

import socket

import pytest

from swim_as.server import ServedApp, _bind_socket, run, serving


async def test_serving_reports_a_failed_lifespan_startup():
    async def failing(scope, receive, send):
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(RuntimeError, match="start-up"):
        async with serving(failing, None, lifespan="on"):
            pytest.fail("the server should not have started")


async def test_accepted_connections_have_nodelay():
    # Small responses must not wait for an ACK (Nagle); asyncio sets
    # TCP_NODELAY only on sockets created with proto IPPROTO_TCP.
    with _bind_socket("127.0.0.1", 0, 8) as listener:
        with socket.create_connection(listener.getsockname(), timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.proto == socket.IPPROTO_TCP
                assert listener.proto == socket.IPPROTO_TCP


def _never_called() -> ServedApp:
    raise AssertionError("the factory must not run")


def test_workers_need_a_picklable_factory():
    def local_factory() -> ServedApp:  # a nested function does not pickle
        return _never_called()

    with pytest.raises(TypeError, match="must pickle"):
        run(local_factory, host="127.0.0.1", port=0, workers=2)


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        run(_never_called, host="127.0.0.1", port=0, workers=0)
