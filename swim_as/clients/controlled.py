"""Who may register what at ``POST /register`` (RFC 7591 §3, D13).

Three ways in:

* **self-registration**: the caller presents its X.509-SVID and registers
  its own SPIFFE ID, where allowed: with a policy file, a rule matching
  the caller must say ``self_register = true``; ``registration.
  self_registration = false`` turns it off everywhere. It never grants a
  scope (D13).
* **initial access token** (RFC 7591 §3): a platform controller registers
  any SPIFFE ID or ``/*`` pattern within the token's patterns; the client
  is granted the token's scopes.
* **software statement** (RFC 7591 §2.3): the statement's claims override
  the body; its issuer must be configured, and may be limited to patterns.

A wildcard ``spiffe_id`` (``…/*``) needs a token or a statement, and the
``spiffe_jwt`` method (an X.509-SVID client's ``client_id`` must be its
SPIFFE ID, so only JWT-SVID clients can stand for many IDs); its
``client_id`` is the pattern itself.

Refusals: no credential at all → 401 (RFC 6750 §3.1, no error code); a
bad token → 401 ``invalid_token``; an ID outside the token's patterns →
403 ``insufficient_scope``; a ``scope`` outside the token's scopes → 400
``invalid_client_metadata`` (RFC 7591 §3.2.2: a metadata value the server
refuses); someone else's ID or a wildcard by SVID alone, or
self-registration the policy does not allow → 403 ``access_denied``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from swim_as.clients.iat import InitialAccessToken, InitialAccessTokens
from swim_as.clients.metadata import ValidatedMetadata
from swim_as.clients.model import SPIFFE_JWT
from swim_as.clients.registration import Registration, RegistrationService
from swim_as.clients.statements import StatementVerifier, VerifiedStatement
from swim_as.errors import (
    AccessDenied,
    InsufficientScope,
    InvalidClientMetadata,
    InvalidToken,
    UnapprovedSoftwareStatement,
)
from swim_as.spiffe.ids import SpiffeIdPattern
from swim_as.storage.db import Transaction

log = logging.getLogger("swim_as.registration")

SelfRegistrationGate = Callable[[str], str | None]


class ControlledRegistration:
    """Decides who may register what, then registers (module docstring)."""

    def __init__(
        self,
        registration: RegistrationService,
        iats: InitialAccessTokens,
        statements: StatementVerifier,
        *,
        self_registration_refusal: SelfRegistrationGate,
    ) -> None:
        self._registration = registration
        self._iats = iats
        self._statements = statements
        self._self_refusal = self_registration_refusal

    async def register(
        self,
        body: Mapping[str, Any],
        *,
        caller_spiffe_id: str | None,
        initial_access_token: str | None,
    ) -> Registration:
        """Register per the rules above.

        Raises:
            InvalidToken, InsufficientScope, AccessDenied,
            InvalidClientMetadata, InvalidSoftwareStatement,
            UnapprovedSoftwareStatement: see the module docstring.
        """
        iat = (
            await self._iats.verify(initial_access_token)
            if initial_access_token is not None
            else None
        )
        statement = None
        if body.get("software_statement") is not None:
            statement = self._statements.verify(body["software_statement"])
            body = statement.apply(body)
        self._registration.refuse_unauthorised(body)
        if iat is None and statement is None:
            return await self._register_self(body, caller_spiffe_id)
        return await self._register_controlled(body, caller_spiffe_id, iat, statement)

    async def _register_self(
        self, body: Mapping[str, Any], caller: str | None
    ) -> Registration:
        if caller is None:
            raise InvalidToken(
                missing=True,
                detail="registration without an SVID, a token or a statement",
            )
        # Checked before the metadata rules, which would refuse the JWT-SVID
        # method a wildcard needs and hide the reason. (A wildcard
        # tls_client_auth_san_uri is bad metadata whoever sends it.)
        wanted = body.get("spiffe_id")
        if isinstance(wanted, str) and wanted.endswith("/*"):
            raise AccessDenied(
                "a wildcard registration needs an initial access token or a "
                "software statement",
                detail=f"{caller} asked for {wanted!r} with its SVID only",
            )
        refusal = self._self_refusal(caller)
        if refusal is not None:
            raise AccessDenied(
                "self-registration is not allowed for this workload",
                detail=f"{caller}: {refusal}",
            )
        return await self._registration.register_self(body, caller)

    async def _register_controlled(
        self,
        body: Mapping[str, Any],
        caller: str | None,
        iat: InitialAccessToken | None,
        statement: VerifiedStatement | None,
    ) -> Registration:
        validated = self._registration.validate(
            body, caller, also_methods=frozenset({SPIFFE_JWT})
        )
        if validated.spiffe_id is None:
            # Key-based and secret clients were refused above (an operator
            # adds them); nothing else lacks a SPIFFE identity.
            raise InvalidClientMetadata(
                "only SPIFFE clients can be registered",
                detail=f"method {validated.auth_method} has no SPIFFE identity",
            )
        target = SpiffeIdPattern.parse(validated.spiffe_id)
        if target.is_wildcard and validated.auth_method != SPIFFE_JWT:
            raise InvalidClientMetadata(
                "a wildcard spiffe_id needs token_endpoint_auth_method spiffe_jwt",
                detail=f"{target} registered with {validated.auth_method}",
            )
        client_id = str(target)
        granted: tuple[str, ...] = ()
        if iat is not None:
            granted = await self._authorise_iat(iat, target, validated)
        if statement is not None:
            if not statement.issuer.allows(target):
                raise UnapprovedSoftwareStatement(
                    "the software statement's issuer may not register this client",
                    detail=(
                        f"issuer {statement.issuer.issuer!r} is not allowed "
                        f"{client_id!r}"
                    ),
                )
            validated = replace(
                validated,
                metadata={**validated.metadata, "software_statement": statement.raw},
            )
        actor = iat.actor if iat is not None else _statement_actor(statement)
        detail: dict[str, Any] = {
            "via": "initial_access_token" if iat is not None else "software_statement",
            "caller": caller,
        }
        if iat is not None:
            detail["iat"] = iat.id
        if statement is not None:
            detail["software_statement_issuer"] = statement.issuer.issuer

        async def spend(tx: Transaction, created: bool) -> None:
            if iat is not None:
                await self._iats.spend(tx, iat, client_id=client_id, created=created)

        registration = await self._registration.create_or_get(
            client_id=client_id,
            validated=validated,
            actor=actor,
            granted_scopes=granted,
            audit_detail=detail,
            also=spend,
        )
        log.info(
            "client registered by a controller",
            extra={
                "event": "client.registered_by_controller",
                "client_id": client_id,
                "actor": actor,
                "client_created": registration.created,
            },
        )
        return registration

    async def _authorise_iat(
        self,
        iat: InitialAccessToken,
        target: SpiffeIdPattern,
        validated: ValidatedMetadata,
    ) -> tuple[str, ...]:
        """Check the token's patterns and scopes; return the scopes to grant."""
        if not iat.allows(target):
            await self._iats.refused(
                iat, f"{target} is outside the token's patterns", target=str(target)
            )
            raise InsufficientScope(
                "the initial access token does not allow this spiffe_id",
                detail=(
                    f"{iat.id} allows {[str(p) for p in iat.patterns]}, "
                    f"not {str(target)!r}"
                ),
            )
        registered = validated.metadata.get("scope")
        if registered is None:
            return tuple(sorted(iat.scopes))
        asked = set(str(registered).split())
        if iat.scopes and not asked <= iat.scopes:
            await self._iats.refused(
                iat,
                f"scope {sorted(asked - iat.scopes)} outside the token's scopes",
                target=str(target),
            )
            raise InvalidClientMetadata(
                "scope is outside what the initial access token allows",
                detail=f"{iat.id} allows {sorted(iat.scopes)}, asked {sorted(asked)}",
            )
        return tuple(sorted(iat.scopes & asked))


def _statement_actor(statement: VerifiedStatement | None) -> str:
    assert statement is not None
    return f"software_statement:{statement.issuer.issuer}"
