"""Operator actions against a running test server (as `swim-as clients` does)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from swim_as.app import enabled_methods
from swim_as.clients.admin import ClientAdmin
from tests.support.harness import Running

JWT_SPIFFE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def operator(server: Running) -> ClientAdmin:
    s = server.services
    return ClientAdmin(
        s.db,
        s.clients,
        s.registration,
        s.clock,
        enabled_methods=frozenset(enabled_methods(s.settings)),
        actor="operator:test",
    )


async def token_when_handshake_accepts(
    server: Running, svid: Any, attempts: int = 50, **form: str
) -> httpx.Response:
    """POST /token, retrying while the TLS layer does not know the cert yet.

    A newly registered self-signed certificate reaches the handshake store
    shortly after the registration commits (a background task).
    """
    for _ in range(attempts):
        try:
            return await server.token(svid, **form)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            await asyncio.sleep(0.1)
    raise AssertionError("the handshake never accepted the certificate")
