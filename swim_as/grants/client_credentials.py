"""The client_credentials grant (RFC 6749 §4.4) with bound tokens (RFC 8705).

Steps: the client is already authenticated; check it may use the grant, ask
the decider what it may have, refuse an unbound token to a client that
requires binding (D6), mint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from swim_as.clientauth.authenticate import AuthenticatedClient
from swim_as.clients.model import CLIENT_CREDENTIALS
from swim_as.errors import InvalidClient, UnauthorizedClient
from swim_as.grants.decision import AccessDecider, Decision
from swim_as.tokens.minter import IssuedToken, TokenMinter

GRANT_TYPE = CLIENT_CREDENTIALS
# Parameters this grant reads (RFC 6749 §4.4.2, RFC 8707 §2); others are
# ignored, as RFC 6749 §3.2 asks for unknown parameters.
PARAMETERS = frozenset({"grant_type", "scope", "resource"})


@dataclass(frozen=True, slots=True)
class ClientCredentialsRequest:
    scopes: Sequence[str] | None
    resources: Sequence[str]


class ClientCredentialsGrant:
    """Issues a token to the authenticated client itself."""

    def __init__(self, decider: AccessDecider, minter: TokenMinter) -> None:
        self._decider = decider
        self._minter = minter

    def issue(
        self, caller: AuthenticatedClient, request: ClientCredentialsRequest
    ) -> tuple[IssuedToken, Decision]:
        client = caller.client
        if GRANT_TYPE not in client.grant_types:
            raise UnauthorizedClient(
                detail=f"{client.client_id} is not registered for {GRANT_TYPE}"
            )
        decision = self._decider.decide(
            client, caller.spiffe_id, request.scopes, request.resources
        )
        certificate = caller.certificate
        if certificate is None and client.requires_bound_tokens:
            raise InvalidClient(
                "a certificate-bound token requires a client certificate",
                detail=(
                    f"{client.client_id} requires bound tokens "
                    "(tls_client_certificate_bound_access_tokens) but proved none"
                ),
            )
        try:
            token = self._minter.mint(
                subject=caller.spiffe_id or client.client_id,
                client_id=client.client_id,
                audience=decision.audience,
                scope=decision.scopes,
                lifetime=decision.max_lifetime,
                not_after=caller.not_after,
                x5t_s256=certificate.thumbprint if certificate is not None else None,
            )
        except ValueError as err:
            # The SVID or assertion that authenticated the client ends now
            # (it passed only within the clock leeway): an authentication
            # problem, RFC 6749 §5.2 invalid_client.
            raise InvalidClient(
                "client credential expires too soon",
                detail=f"{client.client_id}: {err}",
            ) from err
        return token, decision
