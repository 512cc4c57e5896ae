"""X.509-SVIDs over mutual TLS: ``tls_client_auth`` and ``spiffe_x509``.

* ``tls_client_auth`` (RFC 8705 §2.1) with ``tls_client_auth_san_uri``: the
  certificate is an X.509-SVID whose SPIFFE ID equals the registered URI.
* ``spiffe_x509`` (OAuth SPIFFE client-auth draft §3.2): the certificate is
  an X.509-SVID whose SPIFFE ID is the registered ``spiffe_id``.

Both need ``client_id`` (RFC 8705 §2), equal to the SVID's SPIFFE ID (D1).
This is the benchmarked hot path: a cached client lookup (done by the
finder) and a cached SVID verification, nothing else.
"""

from __future__ import annotations

from swim_as.clientauth.base import (
    AuthenticatedClient,
    Credential,
    Credentials,
)
from swim_as.clientauth.presented import PresentedCertificate
from swim_as.clients.model import SPIFFE_X509, TLS_CLIENT_AUTH, Client
from swim_as.errors import InvalidClient
from swim_as.spiffe.errors import X509SvidError
from swim_as.spiffe.x509svid import VerifiedX509Svid
from swim_as.trust.store import TrustStore

X509_SVID_METHODS = frozenset({TLS_CLIENT_AUTH, SPIFFE_X509})


def verify_svid(
    trust: TrustStore, certificate: PresentedCertificate
) -> VerifiedX509Svid:
    """Verify a presented chain as an X.509-SVID, or raise InvalidClient."""
    try:
        return trust.verify_x509_svid(
            certificate.leaf, certificate.intermediates, certificate.cache_key
        )
    except X509SvidError as err:
        raise InvalidClient(
            "client certificate is not a valid SVID",
            detail=f"{err} (x5t#S256={certificate.thumbprint})",
        ) from err


class X509SvidAuthenticator:
    """RFC 8705 §2.1 / SPIFFE client-auth §3.2: an X.509-SVID over mTLS."""

    credential = Credential.CERTIFICATE

    def __init__(
        self, trust: TrustStore, methods: frozenset[str] | set[str] = X509_SVID_METHODS
    ) -> None:
        if not methods or not set(methods) <= X509_SVID_METHODS:
            raise ValueError(f"not X.509-SVID methods: {sorted(methods)}")
        self._trust = trust
        self.methods = frozenset(methods)

    async def authenticate(
        self, client: Client, credentials: Credentials, evidence: object
    ) -> AuthenticatedClient:
        certificate = credentials.certificate
        if certificate is None:
            raise InvalidClient(
                "client certificate required",
                detail=f"no client certificate; client_id={client.client_id!r}",
            )
        svid = verify_svid(self._trust, certificate)
        spiffe_id = str(svid.spiffe_id)
        if client.client_id != spiffe_id:
            raise InvalidClient(
                "client_id does not match the certificate",
                detail=f"client_id {client.client_id!r} != SVID {spiffe_id!r}",
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
