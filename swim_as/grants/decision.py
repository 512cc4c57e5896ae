"""What a client may get: scopes, audiences and lifetime (D8, D13).

Without a policy file, a client gets only the scopes an operator granted it
(``swim-as clients grant``), narrowed by the ``scope`` it registered, and
only the operator's default audience. The policy engine replaces
:class:`OperatorGrants` when a policy is configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from swim_as.clients.model import Client
from swim_as.errors import InvalidScope, InvalidTarget


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome: exactly what the token will carry."""

    scopes: tuple[str, ...]
    audience: tuple[str, ...]
    max_lifetime: int
    rule: str


class AccessDecider(Protocol):
    def decide(
        self,
        client: Client,
        spiffe_id: str | None,
        scopes: Sequence[str] | None,
        resources: Sequence[str],
    ) -> Decision: ...


def narrow_scopes(
    allowed: frozenset[str], requested: Sequence[str] | None, *, who: str
) -> tuple[str, ...]:
    """RFC 6749 §3.3: the requested scopes if all allowed, all if none asked.

    Raises:
        InvalidScope: a requested scope is not allowed (D13).
    """
    if requested is None:
        return tuple(sorted(allowed))
    refused = [s for s in requested if s not in allowed]
    if refused:
        raise InvalidScope(
            "requested scope is not allowed",
            detail=f"{who}: scopes {refused} not granted (granted: {sorted(allowed)})",
        )
    return tuple(dict.fromkeys(requested))


class OperatorGrants:
    """The decision without a policy file (D8)."""

    def __init__(self, default_audience: str, lifetime: int) -> None:
        self._default_audience = default_audience
        self._lifetime = lifetime

    def decide(
        self,
        client: Client,
        spiffe_id: str | None,
        scopes: Sequence[str] | None,
        resources: Sequence[str],
    ) -> Decision:
        allowed = client.granted_scopes
        registered = client.registered_scopes
        if registered is not None:
            allowed = allowed & registered
        granted = narrow_scopes(allowed, scopes, who=client.client_id)
        refused = [r for r in resources if r != self._default_audience]
        if refused:
            raise InvalidTarget(
                "requested resource is not allowed",
                detail=(
                    f"{client.client_id}: resources {refused} not allowed; without a "
                    f"policy only the default audience {self._default_audience!r} is"
                ),
            )
        return Decision(
            scopes=granted,
            audience=(self._default_audience,),
            max_lifetime=self._lifetime,
            rule="operator grants (no policy file)",
        )
