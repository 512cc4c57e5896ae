"""The vocabulary every client authentication method shares.

A token request carries at most one kind of :class:`Credential` (RFC 6749
§2.3). A *finder* turns the credential into a :class:`Claim` (the client it
names, and whatever was learned finding it); the :class:`MethodAuthenticator`
registered for the client's method then proves the claim and returns an
:class:`AuthenticatedClient`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from swim_as.clientauth.presented import PresentedCertificate
from swim_as.clients.model import Client

JWT_SPIFFE_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Credential(enum.Enum):
    """What a request authenticates with (one per request)."""

    # The TLS client certificate, or no credential at all: the client is
    # named by client_id and its method says what must be shown.
    CERTIFICATE = "certificate"
    JWT_SPIFFE = "jwt-spiffe assertion"
    JWT_BEARER = "jwt-bearer assertion"
    BASIC = "basic authorization"
    POST = "client_secret"


@dataclass(frozen=True, slots=True)
class Credentials:
    """Everything in a token request that could authenticate a client.

    ``authorization`` is the raw ``Authorization`` header; ``certificate``
    the presented client certificate (D5), which never counts as a second
    credential: behind a sidecar every request has one.
    """

    client_id: str | None
    certificate: PresentedCertificate | None
    client_assertion_type: str | None = None
    client_assertion: str | None = None
    client_secret: str | None = None
    authorization: str | None = None


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    """The outcome of a successful authentication.

    ``certificate`` is set when a certificate was proven on the request and
    belongs to the client; the token is then bound to it (RFC 8705 §3).
    ``spiffe_id`` is the authenticated SPIFFE ID (the token's ``sub``);
    ``not_after`` bounds the token's ``exp`` (D6: the certificate's
    ``notAfter``, a JWT-SVID's ``exp``).
    """

    client: Client
    method: str
    spiffe_id: str | None
    certificate: PresentedCertificate | None
    not_after: float | None


@dataclass(frozen=True, slots=True)
class Claim:
    """The client a request names, and what was learned finding it.

    ``evidence`` is method-specific: a verified JWT-SVID, a parsed
    assertion, a presented secret.
    """

    client: Client
    evidence: object = None


Finder = Callable[[Credentials], Awaitable[Claim]]


class MethodAuthenticator(Protocol):
    """One or more token endpoint auth methods (D2) and how they are proven."""

    @property
    def methods(self) -> frozenset[str]:
        """The registered method names this authenticator serves."""
        ...

    @property
    def credential(self) -> Credential:
        """The kind of credential a request of these methods carries."""
        ...

    async def authenticate(
        self, client: Client, credentials: Credentials, evidence: object
    ) -> AuthenticatedClient:
        """Prove that the request comes from ``client``, or raise
        ``InvalidClient``; ``evidence`` is what its finder learned."""
        ...
