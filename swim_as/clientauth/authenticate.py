"""Who is calling: client authentication at the token endpoint (D2).

The method is the one the client registered, never guessed from what the
request carries. :class:`ClientAuthenticator` runs three steps:

1. :func:`presented_credential`: which one credential the request carries
   (RFC 6749 §2.3: a request with two, such as an assertion and an
   ``Authorization`` header, is ``invalid_request``). A certificate never
   counts as a second credential (behind a sidecar every request has one).
2. The finder of that credential names the client: ``client_id`` for a
   certificate or a secret, the verified JWT-SVID's ``sub`` (exact, then
   ``/*`` patterns) for ``jwt-spiffe``, the assertion's ``iss``/``sub`` for
   ``jwt-bearer``.
3. The authenticator registered for the client's method (a registry keyed
   by method name) proves it. A client whose method does not take the
   credential that was sent, or whose method is not enabled, is
   ``invalid_client``.

The methods live beside this module: :mod:`~swim_as.clientauth.x509`
(``tls_client_auth``, ``spiffe_x509``), :mod:`~swim_as.clientauth.self_signed`,
:mod:`~swim_as.clientauth.spiffe_jwt`, :mod:`~swim_as.clientauth.private_key_jwt`
and :mod:`~swim_as.clientauth.client_secret`. Every refusal is
:class:`~swim_as.errors.InvalidClient` (401 with a ``Basic`` challenge when
the client used the ``Authorization`` header, D9) or
:class:`~swim_as.errors.InvalidRequest`, with a short public description
and a detail for the log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

from swim_as.clientauth.base import (
    JWT_BEARER_ASSERTION,
    JWT_SPIFFE_ASSERTION,
    AuthenticatedClient,
    Claim,
    Credential,
    Credentials,
    Finder,
    MethodAuthenticator,
)
from swim_as.clientauth.client_secret import parse_basic, refuse_unknown
from swim_as.clientauth.presented import PresentedCertificate
from swim_as.clientauth.x509 import X509SvidAuthenticator, verify_svid
from swim_as.clients.model import Client
from swim_as.errors import InvalidClient, InvalidRequest
from swim_as.spiffe.x509svid import VerifiedX509Svid
from swim_as.trust.store import TrustStore

__all__ = [
    "AuthenticatedClient",
    "ClientAuthenticator",
    "Credential",
    "Credentials",
    "presented_credential",
]

ClientLookup = Callable[[str], Awaitable[Client | None]]
# Called with a verified SVID that has no client yet; may create one (JIT).
MissingClientHook = Callable[[VerifiedX509Svid], Awaitable[Client | None]]

_ASSERTION_TYPES = {
    JWT_SPIFFE_ASSERTION: Credential.JWT_SPIFFE,
    JWT_BEARER_ASSERTION: Credential.JWT_BEARER,
}


def presented_credential(credentials: Credentials) -> Credential:
    """The one credential a request carries (RFC 6749 §2.3, RFC 7521 §4.2).

    Raises:
        InvalidRequest: two credentials, or half of a client assertion.
        InvalidClient: an assertion type swim-as does not know.
    """
    assertion = (
        credentials.client_assertion is not None
        or credentials.client_assertion_type is not None
    )
    header = credentials.authorization is not None
    secret = credentials.client_secret is not None
    if assertion + header + secret > 1:
        sent = [
            name
            for name, present in (
                ("client_assertion", assertion),
                ("Authorization header", header),
                ("client_secret", secret),
            )
            if present
        ]
        raise InvalidRequest(
            "only one client authentication method may be used",
            detail=f"request carried {' and '.join(sent)}",
        )
    if assertion:
        if credentials.client_assertion_type is None:
            raise InvalidRequest("client_assertion_type is required")
        if credentials.client_assertion is None:
            raise InvalidRequest("client_assertion is required")
        assertion_type = credentials.client_assertion_type
        kind = _ASSERTION_TYPES.get(assertion_type)
        if kind is None:
            raise InvalidClient(
                "unsupported client_assertion_type",
                detail=f"client_assertion_type {assertion_type[:100]!r}",
            )
        return kind
    if header:
        assert credentials.authorization is not None
        scheme = credentials.authorization.strip().partition(" ")[0]
        if scheme.lower() != "basic":
            # Bearer, DPoP, ...: not client authentication (RFC 6749 §2.3).
            raise InvalidRequest(
                "unsupported authorization scheme at the token endpoint",
                detail=f"Authorization scheme {scheme[:40]!r}",
            )
        return Credential.BASIC
    if secret:
        return Credential.POST
    return Credential.CERTIFICATE


class ClientAuthenticator:
    """Authenticates token requests by the client's registered method."""

    def __init__(
        self,
        trust: TrustStore,
        lookup: ClientLookup,
        *,
        methods: Iterable[MethodAuthenticator] | None = None,
        finders: Mapping[Credential, Finder] | None = None,
        on_missing_client: MissingClientHook | None = None,
    ) -> None:
        self._trust = trust
        self._lookup = lookup
        self._on_missing = on_missing_client
        registry: dict[str, MethodAuthenticator] = {}
        if methods is None:
            methods = (X509SvidAuthenticator(trust),)
        for authenticator in methods:
            for name in authenticator.methods:
                registry[name] = authenticator
        self._methods = registry
        # Certificates name the client by client_id (RFC 8705 §2); that
        # path is inlined in authenticate.
        self._finders: dict[Credential, Finder] = {
            Credential.BASIC: self._by_basic,
            Credential.POST: self._by_form_secret,
            **(finders or {}),
        }

    @property
    def enabled_methods(self) -> frozenset[str]:
        return frozenset(self._methods)

    async def authenticate(self, credentials: Credentials) -> AuthenticatedClient:
        """Authenticate, or raise :class:`InvalidClient` / :class:`InvalidRequest`."""
        if (
            credentials.client_assertion is None
            and credentials.client_assertion_type is None
            and credentials.authorization is None
            and credentials.client_secret is None
        ):
            # The benchmarked path (X.509-SVIDs): no credential but the
            # certificate, one cached lookup and the method's check.
            client_id = credentials.client_id
            if client_id is None:
                raise InvalidRequest(
                    "client_id is required",
                    detail="no client_id and no other client credential",
                )
            client = await self._lookup(client_id)
            if client is None:
                client = await self._missing(client_id, credentials)
            method = self._method(client, Credential.CERTIFICATE)
            return await method.authenticate(client, credentials, None)
        credential = presented_credential(credentials)
        try:
            finder = self._finders.get(credential)
            if finder is None:
                raise InvalidClient(
                    "client authentication method not enabled",
                    detail=f"{credential.value} sent; its method is not enabled",
                )
            claim = await finder(credentials)
            method = self._method(claim.client, credential)
            return await method.authenticate(claim.client, credentials, claim.evidence)
        except InvalidClient as err:
            # D9: a client that used the Authorization header gets a 401
            # with a challenge for its scheme.
            if credential is Credential.BASIC and err.scheme is None:
                err.scheme = "Basic"
            raise

    def verify_svid(self, certificate: PresentedCertificate) -> VerifiedX509Svid:
        """Verify a presented chain as an X.509-SVID, or raise InvalidClient."""
        return verify_svid(self._trust, certificate)

    def _method(self, client: Client, credential: Credential) -> MethodAuthenticator:
        """The registered method's authenticator, if it takes ``credential``."""
        if client.disabled:
            raise InvalidClient(
                "client is disabled",
                detail=f"client {client.client_id!r} is disabled",
            )
        method = self._methods.get(client.auth_method)
        if method is None or method.credential is not credential:
            raise InvalidClient(
                "client is registered for another authentication method",
                detail=(
                    f"{client.client_id!r} registered {client.auth_method}"
                    f"{'' if method else ' (not enabled)'}; "
                    f"request carried {credential.value}"
                ),
            )
        return method

    async def _missing(self, client_id: str, credentials: Credentials) -> Client:
        """No client has ``client_id``: JIT registration by policy, or refuse."""
        certificate = credentials.certificate
        if self._on_missing is not None and certificate is not None:
            svid = self.verify_svid(certificate)
            if str(svid.spiffe_id) == client_id:
                client = await self._on_missing(svid)
                if client is not None:
                    return client
        raise InvalidClient(
            "unknown client", detail=f"no client registered as {client_id!r}"
        )

    async def _by_basic(self, credentials: Credentials) -> Claim:
        """RFC 6749 §2.3.1: client_id and secret in ``Authorization: Basic``."""
        assert credentials.authorization is not None
        parsed = parse_basic(credentials.authorization)
        if parsed is None:
            raise InvalidClient(
                "malformed basic credentials",
                detail="Authorization header is not a well-formed Basic credential",
            )
        client_id, secret = parsed
        if credentials.client_id is not None and credentials.client_id != client_id:
            raise InvalidClient(
                "client_id does not match the credentials",
                detail=f"form client_id {credentials.client_id!r} != {client_id!r}",
            )
        return Claim(await self._known_for_secret(client_id, secret), secret)

    async def _by_form_secret(self, credentials: Credentials) -> Claim:
        """RFC 6749 §2.3.1: client_id and client_secret in the body."""
        if credentials.client_id is None:
            raise InvalidRequest(
                "client_id is required", detail="client_secret without client_id"
            )
        assert credentials.client_secret is not None
        return Claim(
            await self._known_for_secret(
                credentials.client_id, credentials.client_secret
            ),
            credentials.client_secret,
        )

    async def _known_for_secret(self, client_id: str, secret: str) -> Client:
        client = await self._lookup(client_id)
        if client is None:
            raise await refuse_unknown(client_id, secret)
        return client

    async def _known(self, client_id: str) -> Client:
        client = await self._lookup(client_id)
        if client is None:
            raise InvalidClient(
                "unknown client", detail=f"no client registered as {client_id!r}"
            )
        return client
