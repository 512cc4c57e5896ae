"""Helpers for trust and key tests: audit records, readiness, clients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from sqlalchemy import select

from swim_as.clients.admin import ClientAdmin
from swim_as.storage.models import AuditRow
from tests.support.harness import Running


class RecordingAudit:
    """An audit sink that keeps (event, detail) in memory, for unit tests of
    what a component reports; the database-backed sink is tested apart."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def add(
        self,
        event: str,
        *,
        actor: str,
        client_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        self.records.append((event, dict(detail or {})))

    def events(self) -> list[str]:
        return [event for event, _ in self.records]


async def audit_rows(services: Any, prefix: str) -> list[AuditRow]:
    """Audit records whose event starts with ``prefix``, oldest first."""
    await services.audit.flush()
    async with services.db.reading() as session:
        rows = await session.scalars(
            select(AuditRow)
            .where(AuditRow.event.startswith(prefix, autoescape=True))
            .order_by(AuditRow.id)
        )
        return list(rows.all())


async def readyz(server: Running) -> httpx.Response:
    async with server.client() as client:
        return await client.get(f"{server.issuer}/readyz")


def admin(server: Running) -> ClientAdmin:
    s = server.services
    return ClientAdmin(
        s.db,
        s.clients,
        s.registration,
        s.clock,
        enabled_methods=frozenset({"tls_client_auth", "spiffe_x509"}),
        actor="test",
    )


async def token_status(server: Running, svid: Any, client_id: str) -> str:
    """``"200"``, the OAuth ``error``, or ``"handshake"`` when TLS refused."""
    try:
        r = await server.token(svid, client_id=client_id)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return "handshake"
    if r.status_code == 200:
        return "200"
    return str(r.json()["error"])
