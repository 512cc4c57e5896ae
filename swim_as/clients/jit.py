"""Just-in-time registration: a workload's first token request creates it.

When a workload presents a valid X.509-SVID, has no client yet, and the
policy rule that decides for its SPIFFE ID says ``jit = true``, the token
endpoint creates a ``tls_client_auth`` client for that ID in the same
request and goes on to issue the token. This is the one database write on
the token path, and only on a workload's first request.

A burst of first requests creates one row: within a process they share one
creation (single flight: the first request inserts, the others await its
result); across replicas the insert-or-nothing of registration decides.
The creation is audited as ``client.jit_created`` with the rule's name. A
JIT client gets no scope of its own: what it may have comes from the rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from swim_as.clients.metadata import validate_metadata
from swim_as.clients.model import TLS_CLIENT_AUTH, Client
from swim_as.clients.registration import RegistrationService
from swim_as.policy.rules import Policy
from swim_as.spiffe.x509svid import VerifiedX509Svid

EVENT = "client.jit_created"


class JustInTime:
    """The authenticator's hook for SVIDs without a client."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        registration: RegistrationService,
        lookup: Callable[[str], Awaitable[Client | None]],
    ) -> None:
        self._policy = policy
        self._registration = registration
        self._lookup = lookup
        self._flights: dict[str, asyncio.Future[Client]] = {}

    async def __call__(self, svid: VerifiedX509Svid) -> Client | None:
        spiffe_id = str(svid.spiffe_id)
        rule = self._policy().rule_for(spiffe_id)
        if rule is None or not rule.jit:
            return None
        flight = self._flights.get(spiffe_id)
        if flight is None:
            # A request whose lookup overlapped a finished creation: read
            # again rather than write again.
            existing = await self._lookup(spiffe_id)
            if existing is not None:
                return existing
            flight = self._flights.get(spiffe_id)
        if flight is None:
            flight = asyncio.ensure_future(self._create(spiffe_id, rule.name))
            self._flights[spiffe_id] = flight
            flight.add_done_callback(lambda done: self._landed(spiffe_id, done))
        # shield: a request that goes away must not cancel the others' creation.
        return await asyncio.shield(flight)

    def _landed(self, spiffe_id: str, flight: asyncio.Future[Client]) -> None:
        self._flights.pop(spiffe_id, None)
        if not flight.cancelled():
            # Every waiter may have gone; the error still reached the log
            # of the request that saw it, so mark it as retrieved.
            flight.exception()

    async def _create(self, spiffe_id: str, rule: str) -> Client:
        validated = validate_metadata(
            {
                "token_endpoint_auth_method": TLS_CLIENT_AUTH,
                "tls_client_auth_san_uri": spiffe_id,
            },
            enabled_methods=frozenset({TLS_CLIENT_AUTH}),
            caller_spiffe_id=spiffe_id,
        )
        # create_or_get logs the creation (event client.jit_created).
        registration = await self._registration.create_or_get(
            client_id=spiffe_id,
            validated=validated,
            actor=spiffe_id,
            event=EVENT,
            audit_detail={"rule": rule},
        )
        return registration.client
