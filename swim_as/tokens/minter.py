"""Minting RFC 9068 JWT access tokens (D6).

Claims (RFC 9068 §2.2): ``iss``, ``exp``, ``aud``, ``sub``, ``client_id``,
``iat``, ``jti``, ``scope`` when any scope is granted, and ``cnf`` with
``x5t#S256`` (RFC 8705 §3.1) whenever a certificate was proven on the
request. The header has ``typ`` ``at+jwt`` (RFC 9068 §2.1) and the ``kid``.
``exp`` never passes the certificate's ``notAfter`` nor any other bound the
caller passes in (a JWT-SVID's ``exp``).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from swim_as.clock import Clock
from swim_as.keys.keyring import Keyring


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A minted token and the facts the response and the log need."""

    access_token: str
    expires_in: int
    scope: tuple[str, ...]
    jti: str
    kid: str
    bound: bool


class TokenMinter:
    """Signs access tokens with the keyring's current key."""

    def __init__(self, issuer: str, keyring: Keyring, clock: Clock) -> None:
        self._issuer = issuer
        self._keyring = keyring
        self._clock = clock

    def mint(
        self,
        *,
        subject: str,
        client_id: str,
        audience: Sequence[str],
        scope: Sequence[str],
        lifetime: int,
        not_after: float | None = None,
        x5t_s256: str | None = None,
        extra: dict[str, object] | None = None,
    ) -> IssuedToken:
        """Sign a token.

        Args:
            lifetime: the longest lifetime in seconds.
            not_after: an absolute bound for ``exp`` (certificate notAfter,
                JWT-SVID exp), in epoch seconds.
            x5t_s256: thumbprint of the certificate proven on this request.

        Raises:
            ValueError: the bounds leave no lifetime at all.
        """
        now = self._clock.time()
        iat = int(now)
        exp = iat + lifetime
        if not_after is not None:
            exp = min(exp, math.floor(not_after))
        if exp <= iat:
            raise ValueError("no lifetime left under the given bounds")
        signer = self._keyring.signer()
        jti = secrets.token_urlsafe(16)
        claims: dict[str, object] = {
            "iss": self._issuer,
            "sub": subject,
            "aud": audience[0] if len(audience) == 1 else list(audience),
            "client_id": client_id,
            "iat": iat,
            "exp": exp,
            "jti": jti,
        }
        if scope:
            claims["scope"] = " ".join(scope)
        if x5t_s256 is not None:
            claims["cnf"] = {"x5t#S256": x5t_s256}
        if extra:
            claims.update(extra)
        payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()
        return IssuedToken(
            access_token=signer.sign(payload),
            expires_in=exp - iat,
            scope=tuple(scope),
            jti=jti,
            kid=signer.kid,
            bound=x5t_s256 is not None,
        )
