"""Authenticating a client by an identity a validating proxy vouched for
(D5, D6).

Behind a sidecar that verifies client certificates itself and forwards only
the identity (an XFCC element with ``URI`` and no ``Cert``), swim-as has no
certificate to verify. The mesh middleware produces a
:class:`~swim_as.clientauth.presented.ForwardedIdentity` only when the
operator marked the proxy as validating (``mesh.proxy_validates``); this
module turns it into an :class:`AuthenticatedClient` for a client registered
with an X.509 method (``tls_client_auth`` with ``tls_client_auth_san_uri``,
or ``spiffe_x509``), with the same checks as for a certificate except the
ones that need the certificate itself. The result never carries a
certificate, so the token is not bound (D6), and a client that requires
bound tokens is refused by the grant.

Kept apart from ``authenticate.py`` on purpose; the authenticator calls
:func:`authenticate_forwarded_identity` when a request carries a forwarded
identity and no certificate (see the function's docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from swim_as.clientauth.authenticate import AuthenticatedClient
from swim_as.clientauth.presented import ForwardedIdentity
from swim_as.clients.model import SPIFFE_X509, TLS_CLIENT_AUTH, Client
from swim_as.errors import InvalidClient, InvalidRequest
from swim_as.spiffe.errors import SpiffeIdError
from swim_as.spiffe.ids import SpiffeId
from swim_as.trust.store import TrustStore

log = logging.getLogger("swim_as.mesh")

IDENTITY_METHODS = frozenset({TLS_CLIENT_AUTH, SPIFFE_X509})
ClientLookup = Callable[[str], Awaitable[Client | None]]


async def authenticate_forwarded_identity(
    identity: ForwardedIdentity,
    client_id: str | None,
    *,
    trust: TrustStore,
    lookup: ClientLookup,
) -> AuthenticatedClient:
    """Authenticate a client by a validating proxy's word (D5).

    Checks, in order: ``client_id`` is present (RFC 8705 §2) and equals the
    forwarded SPIFFE ID (D1); the ID is a strict SPIFFE ID (D4) of a
    configured trust domain whose bundle is in force (D3: the proxy may have
    trusted more than swim-as does); the client exists, is enabled, is
    registered for ``tls_client_auth`` or ``spiffe_x509`` (D2: the method
    comes from the registration), and its registered identity is this one.

    The caller (the client authenticator) calls this instead of refusing
    with "client certificate required" when the request has no certificate
    but a forwarded identity, and no other credentials.

    Raises:
        InvalidRequest: no ``client_id``.
        InvalidClient: any other check fails.
    """
    if client_id is None:
        raise InvalidRequest(
            "client_id is required", detail="forwarded identity without client_id"
        )
    try:
        spiffe_id = SpiffeId.parse(identity.spiffe_id)
    except SpiffeIdError as err:
        raise InvalidClient(
            "forwarded identity is not a SPIFFE ID", detail=str(err)
        ) from err
    state = trust.state(spiffe_id.trust_domain)
    if state is None or state.expired or state.x509 is None:
        raise InvalidClient(
            "forwarded identity is not in a trusted trust domain",
            detail=(
                f"forwarded identity {identity.spiffe_id!r}: trust domain "
                f"{spiffe_id.trust_domain} is not configured or not in force"
            ),
        )
    if client_id != identity.spiffe_id:
        raise InvalidClient(
            "client_id does not match the forwarded identity",
            detail=f"client_id {client_id!r} != forwarded {identity.spiffe_id!r}",
        )
    client = await lookup(identity.spiffe_id)
    if client is None:
        raise InvalidClient(
            "unknown client", detail=f"no client registered for {client_id!r}"
        )
    if client.disabled:
        raise InvalidClient("client is disabled", detail=f"{client_id!r} is disabled")
    if client.auth_method not in IDENTITY_METHODS:
        raise InvalidClient(
            "client is registered for another authentication method",
            detail=(
                f"{client_id!r} registered {client.auth_method}; "
                "sent a forwarded identity"
            ),
        )
    registered = (
        client.metadata.get("tls_client_auth_san_uri")
        if client.auth_method == TLS_CLIENT_AUTH
        else client.spiffe_id
    )
    if registered != identity.spiffe_id:
        raise InvalidClient(
            "forwarded identity does not match the registered identity",
            detail=f"forwarded {identity.spiffe_id!r} != registered {registered!r}",
        )
    log.info(
        "client authenticated by a validating proxy's forwarded identity",
        extra={
            "event": "mesh.identity_authenticated",
            "client_id": client_id,
            "spiffe_id": identity.spiffe_id,
            "auth_method": client.auth_method,
            "hash": identity.sha256_hex,
        },
    )
    return AuthenticatedClient(
        client=client,
        method=client.auth_method,
        spiffe_id=identity.spiffe_id,
        certificate=None,
        not_after=None,
    )
