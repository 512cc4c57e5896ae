"""``private_key_jwt``: RFC 7523 §2.2 client assertions signed with a client key.

For workloads without a SPIFFE identity. ``client_assertion_type`` is
``urn:ietf:params:oauth:client-assertion-type:jwt-bearer``; the client is
the assertion's ``iss`` (= ``sub``), and a ``client_id`` in the request,
optional, must be the same. The assertion is checked by
:mod:`~swim_as.clientauth.assertion` with the keys the client registered
(``jwks`` or ``jwks_uri``; an unknown ``kid`` refetches a ``jwks_uri`` at
most once per refresh interval).

Replay (RFC 7523 §3 item 7): ``jti`` is required, and an assertion is
accepted once while it lives, across every replica. This needs one
database write per request on this method's path
(:class:`~swim_as.storage.assertions.SqlAssertionLog`); the X.509-SVID
path writes nothing.

Tokens issued this way are never certificate-bound: the client proves a
key, not a certificate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from swim_as.clientauth.assertion import (
    AssertionRefused,
    ParsedAssertion,
    VerifiedAssertion,
    parse_assertion,
    verify_assertion,
)
from swim_as.clientauth.base import (
    AuthenticatedClient,
    Claim,
    Credential,
    Credentials,
)
from swim_as.clientauth.client_keys import ClientKeys, KeysUnavailable
from swim_as.clientauth.jwk import ClientKeySet
from swim_as.clients.model import PRIVATE_KEY_JWT, Client
from swim_as.clock import Clock
from swim_as.errors import InvalidClient

ClientLookup = Callable[[str], Awaitable[Client | None]]


class AssertionLog(Protocol):
    """Where accepted assertions are remembered (shared by all replicas)."""

    async def first_use(
        self, client_id: str, jti: str, expires_at: datetime, now: datetime
    ) -> bool: ...


class PrivateKeyJwtAuthenticator:
    """Finds and authenticates clients by an RFC 7523 assertion."""

    methods = frozenset({PRIVATE_KEY_JWT})
    credential = Credential.JWT_BEARER

    def __init__(
        self,
        keys: ClientKeys,
        log: AssertionLog,
        clock: Clock,
        *,
        lookup: ClientLookup,
        audience: str,
        max_lifetime: int,
        leeway: int,
    ) -> None:
        self._keys = keys
        self._log = log
        self._clock = clock
        self._lookup = lookup
        self._audience = audience
        self._max_lifetime = max_lifetime
        self._leeway = leeway

    async def find(self, credentials: Credentials) -> Claim:
        """Read (not yet trust) the assertion to learn which client it names."""
        try:
            parsed = parse_assertion(credentials.client_assertion)
        except AssertionRefused as err:
            raise _refused(err) from err
        subject = parsed.subject
        if subject is None:
            raise InvalidClient(
                "invalid client assertion",
                detail="private_key_jwt: iss and sub must be the same client_id",
            )
        sent = credentials.client_id
        if sent is not None and sent != subject:
            raise InvalidClient(
                "client_id does not match the assertion",
                detail=f"client_id {sent[:300]!r} != iss/sub {subject[:300]!r}",
            )
        client = await self._lookup(subject)
        if client is None:
            raise InvalidClient(
                "unknown client", detail=f"no client registered as {subject[:300]!r}"
            )
        return Claim(client, parsed)

    async def authenticate(
        self, client: Client, credentials: Credentials, evidence: object
    ) -> AuthenticatedClient:
        parsed = evidence
        assert isinstance(parsed, ParsedAssertion)
        verified = await self._verify(client, parsed)

        now = self._clock.now()
        expires = datetime.fromtimestamp(verified.expires_at + self._leeway, UTC)
        if not await self._log.first_use(client.client_id, verified.jti, expires, now):
            raise InvalidClient(
                "client assertion was already used",
                detail=f"replayed jti {verified.jti[:80]!r} of {client.client_id!r}",
            )
        return AuthenticatedClient(
            client=client,
            method=PRIVATE_KEY_JWT,
            spiffe_id=None,
            certificate=None,
            not_after=None,
        )

    async def _verify(
        self, client: Client, parsed: ParsedAssertion
    ) -> VerifiedAssertion:
        keys = await self._client_keys(client, refresh=False)
        try:
            return self._check(client, parsed, keys)
        except AssertionRefused as err:
            if err.reason != "unknown_kid" or "jwks_uri" not in client.metadata:
                raise _refused(err) from err
        # The client may have rotated its keys since the last fetch.
        keys = await self._client_keys(client, refresh=True)
        try:
            return self._check(client, parsed, keys)
        except AssertionRefused as err:
            raise _refused(err) from err

    def _check(
        self, client: Client, parsed: ParsedAssertion, keys: ClientKeySet
    ) -> VerifiedAssertion:
        return verify_assertion(
            parsed,
            keys,
            client_id=client.client_id,
            audience=self._audience,
            now=self._clock.time(),
            max_lifetime=self._max_lifetime,
            leeway=self._leeway,
        )

    async def _client_keys(self, client: Client, *, refresh: bool) -> ClientKeySet:
        try:
            return await self._keys.of(client, require_x5c=False, refresh=refresh)
        except KeysUnavailable as err:
            raise InvalidClient(
                "client keys are not available", detail=str(err)
            ) from err


def _refused(err: AssertionRefused) -> InvalidClient:
    return InvalidClient(
        "invalid client assertion",
        detail=f"private_key_jwt: {err} (reason {err.reason})",
    )
