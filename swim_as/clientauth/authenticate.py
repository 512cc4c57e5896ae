"""Who is calling: client authentication at the token endpoint (D2).

The method is the one the client registered, never guessed from what the
request carries. :class:`ClientAuthenticator` reads the credentials of a
request, finds the client, and runs the registered method's check:

* ``tls_client_auth`` (RFC 8705 §2.1) with ``tls_client_auth_san_uri``: the
  certificate is an X.509-SVID whose SPIFFE ID equals the registered URI.
* ``spiffe_x509`` (OAuth SPIFFE client-auth draft): the certificate is an
  X.509-SVID whose SPIFFE ID is the registered ``spiffe_id``.

Both need ``client_id`` (RFC 8705 §2) and it must equal the SVID's SPIFFE ID
(D1). Every refusal is :class:`~swim_as.errors.InvalidClient` with a short
public description and a detail for the log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from swim_as.clientauth.presented import PresentedCertificate
from swim_as.clients.model import SPIFFE_X509, TLS_CLIENT_AUTH, Client
from swim_as.errors import InvalidClient, InvalidRequest
from swim_as.spiffe.errors import X509SvidError
from swim_as.spiffe.x509svid import VerifiedX509Svid
from swim_as.trust.store import TrustStore

X509_SVID_METHODS = frozenset({TLS_CLIENT_AUTH, SPIFFE_X509})


@dataclass(frozen=True, slots=True)
class Credentials:
    """Everything in a token request that could authenticate a client."""

    client_id: str | None
    certificate: PresentedCertificate | None
    client_assertion_type: str | None = None
    client_assertion: str | None = None


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    """The outcome of a successful authentication.

    ``certificate`` is set when a certificate was proven on the request; the
    token is then bound to it (RFC 8705 §3). ``not_after`` bounds the token's
    ``exp`` (the SVID's expiry).
    """

    client: Client
    method: str
    spiffe_id: str | None
    certificate: PresentedCertificate | None
    not_after: float | None


ClientLookup = Callable[[str], Awaitable[Client | None]]
# Called with a verified SVID that has no client yet; may create one (JIT).
MissingClientHook = Callable[[VerifiedX509Svid], Awaitable[Client | None]]


class ClientAuthenticator:
    """Authenticates token requests by the client's registered method."""

    def __init__(
        self,
        trust: TrustStore,
        lookup: ClientLookup,
        *,
        on_missing_client: MissingClientHook | None = None,
    ) -> None:
        self._trust = trust
        self._lookup = lookup
        self._on_missing = on_missing_client

    async def authenticate(self, credentials: Credentials) -> AuthenticatedClient:
        """Authenticate, or raise :class:`InvalidClient` / :class:`InvalidRequest`."""
        if credentials.client_assertion is not None or (
            credentials.client_assertion_type is not None
        ):
            raise InvalidClient(
                "client assertions are not accepted",
                detail="client_assertion sent; no assertion method is enabled",
            )
        return await self._authenticate_x509_svid(credentials)

    async def _authenticate_x509_svid(
        self, credentials: Credentials
    ) -> AuthenticatedClient:
        """RFC 8705 §2.1 / SPIFFE client-auth: an X.509-SVID over mTLS."""
        if credentials.client_id is None:
            raise InvalidRequest(
                "client_id is required", detail="certificate auth without client_id"
            )
        certificate = credentials.certificate
        if certificate is None:
            raise InvalidClient(
                "client certificate required",
                detail=f"no client certificate; client_id={credentials.client_id!r}",
            )
        svid = self.verify_svid(certificate)
        spiffe_id = str(svid.spiffe_id)
        if credentials.client_id != spiffe_id:
            raise InvalidClient(
                "client_id does not match the certificate",
                detail=f"client_id {credentials.client_id!r} != SVID {spiffe_id!r}",
            )
        client = await self._lookup(spiffe_id)
        if client is None and self._on_missing is not None:
            client = await self._on_missing(svid)
        if client is None:
            raise InvalidClient(
                "unknown client", detail=f"no client registered for {spiffe_id!r}"
            )
        self._check_usable(client)
        if client.auth_method not in X509_SVID_METHODS:
            raise InvalidClient(
                "client is registered for another authentication method",
                detail=f"{spiffe_id!r} registered {client.auth_method}; sent a cert",
            )
        registered = (
            client.metadata.get("tls_client_auth_san_uri")
            if client.auth_method == TLS_CLIENT_AUTH
            else client.spiffe_id
        )
        if registered != spiffe_id:
            raise InvalidClient(
                "certificate does not match the registered identity",
                detail=f"SVID {spiffe_id!r} != registered {registered!r}",
            )
        return AuthenticatedClient(
            client=client,
            method=client.auth_method,
            spiffe_id=spiffe_id,
            certificate=certificate if certificate.proven else None,
            not_after=svid.not_after.timestamp(),
        )

    def verify_svid(self, certificate: PresentedCertificate) -> VerifiedX509Svid:
        """Verify a presented chain as an X.509-SVID, or raise InvalidClient."""
        try:
            return self._trust.verify_x509_svid(
                certificate.leaf, certificate.intermediates, certificate.cache_key
            )
        except X509SvidError as err:
            raise InvalidClient(
                "client certificate is not a valid SVID",
                detail=f"{err} (x5t#S256={certificate.thumbprint})",
            ) from err

    @staticmethod
    def _check_usable(client: Client) -> None:
        if client.disabled:
            raise InvalidClient(
                "client is disabled", detail=f"client {client.client_id!r} is disabled"
            )
