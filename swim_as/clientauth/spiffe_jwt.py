"""``spiffe_jwt``: a JWT-SVID as the client assertion.

OAuth SPIFFE client-auth draft §3.1 (``client_assertion_type``
``urn:ietf:params:oauth:client-assertion-type:jwt-spiffe``), SPIFFE JWT-SVID
§2-§4; the token itself is checked by
:func:`~swim_as.spiffe.jwtsvid.verify_jwt_svid` with the issuer as the only
audience, the key taken from the JWT bundle of ``sub``'s trust domain.

Finding the client (draft §5.1, D1): the client whose ``client_id`` is the
``sub`` itself, else the registered ``spiffe_id`` pattern ending in ``/*``
that matches ``sub`` on a whole-segment boundary, the most specific one.
A ``client_id`` in the request is optional; when sent it must be ``sub`` or
the found client's ``client_id``.

An unknown ``kid`` reloads that trust domain's bundle source once (rate
limited by :class:`~swim_as.trust.refresh.JwtBundleRefresher`) and verifies
again.

Binding (D6, RFC 8705 §3): a certificate on the request does not change
the method; the token is bound to it only when it was proven in the
handshake and is a valid X.509-SVID of the same SPIFFE ID as ``sub``. The
token's ``exp`` never passes the JWT-SVID's ``exp`` (nor, when bound, the
certificate's ``notAfter``). Whether a client without a proven certificate
may get an unbound token is its ``tls_client_certificate_bound_access_tokens``
flag, enforced by the grant.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from swim_as.clientauth.base import (
    AuthenticatedClient,
    Claim,
    Credential,
    Credentials,
)
from swim_as.clientauth.presented import PresentedCertificate
from swim_as.clients.model import SPIFFE_JWT, Client
from swim_as.clock import Clock
from swim_as.errors import InvalidClient
from swim_as.spiffe.bundle import JwtBundle
from swim_as.spiffe.errors import JwtSvidError, X509SvidError
from swim_as.spiffe.ids import SpiffeId, TrustDomain
from swim_as.spiffe.jwtsvid import VerifiedJwtSvid, verify_jwt_svid
from swim_as.trust.store import TrustStore

log = logging.getLogger("swim_as.clientauth")

ClientLookup = Callable[[str], Awaitable[Client | None]]
PatternLookup = Callable[[SpiffeId], Awaitable[Client | None]]
Reload = Callable[[TrustDomain], Awaitable[bool]]

# Failures where a reload of the trust domain's keys could change the answer.
_RELOADABLE = frozenset({"unknown_kid", "no_bundle"})


class SpiffeJwtAuthenticator:
    """Finds and authenticates clients by a JWT-SVID assertion."""

    methods = frozenset({SPIFFE_JWT})
    credential = Credential.JWT_SPIFFE

    def __init__(
        self,
        trust: TrustStore,
        clock: Clock,
        *,
        lookup: ClientLookup,
        patterns: PatternLookup,
        reload: Reload,
        audience: str,
        max_lifetime: int,
        leeway: int,
    ) -> None:
        self._trust = trust
        self._clock = clock
        self._lookup = lookup
        self._patterns = patterns
        self._reload = reload
        self._audience = audience
        self._max_lifetime = max_lifetime
        self._leeway = leeway

    async def find(self, credentials: Credentials) -> Claim:
        """Verify the JWT-SVID, then find the client its ``sub`` names."""
        assert credentials.client_assertion is not None
        svid = await self._verify(credentials.client_assertion)
        sub = str(svid.spiffe_id)
        client = await self._lookup(sub)
        if client is None:
            client = await self._patterns(svid.spiffe_id)
        if client is None:
            raise InvalidClient(
                "unknown client", detail=f"no client matches JWT-SVID {sub!r}"
            )
        sent = credentials.client_id
        if sent is not None and sent not in (sub, client.client_id):
            raise InvalidClient(
                "client_id does not match the assertion",
                detail=f"client_id {sent[:300]!r}; JWT-SVID {sub!r} is client "
                f"{client.client_id!r}",
            )
        return Claim(client, svid)

    async def authenticate(
        self, client: Client, credentials: Credentials, evidence: object
    ) -> AuthenticatedClient:
        svid = evidence
        assert isinstance(svid, VerifiedJwtSvid)
        not_after = svid.expires_at.timestamp()
        certificate = self._bindable(credentials.certificate, svid.spiffe_id)
        if certificate is not None:
            not_after = min(not_after, certificate[1])
        return AuthenticatedClient(
            client=client,
            method=SPIFFE_JWT,
            spiffe_id=str(svid.spiffe_id),
            certificate=certificate[0] if certificate else None,
            not_after=not_after,
        )

    async def _verify(self, token: str) -> VerifiedJwtSvid:
        asked: list[TrustDomain] = []

        def bundle_for(trust_domain: TrustDomain) -> JwtBundle | None:
            asked.append(trust_domain)
            return self._trust.jwt_bundle(trust_domain)

        try:
            return self._verify_with(token, bundle_for)
        except JwtSvidError as err:
            if err.reason not in _RELOADABLE or not asked:
                raise _refused(err) from err
            if not await self._reload(asked[0]):
                raise _refused(err) from err
        try:
            return self._verify_with(token, bundle_for)
        except JwtSvidError as err:
            raise _refused(err) from err

    def _verify_with(
        self, token: str, bundle_for: Callable[[TrustDomain], JwtBundle | None]
    ) -> VerifiedJwtSvid:
        return verify_jwt_svid(
            token,
            bundle_for,
            audience=self._audience,
            at=self._clock.now(),
            max_remaining_lifetime=self._max_lifetime,
            leeway=self._leeway,
        )

    def _bindable(
        self, certificate: PresentedCertificate | None, spiffe_id: SpiffeId
    ) -> tuple[PresentedCertificate, float] | None:
        """The certificate and its notAfter, if the token may be bound to it."""
        if certificate is None or not certificate.proven:
            return None
        try:
            svid = self._trust.verify_x509_svid(
                certificate.leaf, certificate.intermediates, certificate.cache_key
            )
        except X509SvidError as err:
            log.info(
                "certificate beside a JWT-SVID is not an SVID; token not bound",
                extra={
                    "event": "client_auth.not_bound",
                    "spiffe_id": str(spiffe_id),
                    "x5t": certificate.thumbprint,
                    "reason": str(err),
                },
            )
            return None
        if svid.spiffe_id != spiffe_id:
            log.info(
                "certificate beside a JWT-SVID names another workload; not bound",
                extra={
                    "event": "client_auth.not_bound",
                    "spiffe_id": str(spiffe_id),
                    "x5t": certificate.thumbprint,
                    "reason": f"certificate is {svid.spiffe_id}",
                },
            )
            return None
        return certificate, svid.not_after.timestamp()


def _refused(err: JwtSvidError) -> InvalidClient:
    return InvalidClient(
        "client assertion is not a valid JWT-SVID",
        detail=f"{err} (reason {err.reason})",
    )
