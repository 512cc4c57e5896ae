"""Client secrets, kept only so that clients can migrate away from them.

RFC 6749 §2.3.1 (``client_secret_basic``, ``client_secret_post``). swim-as
never lets a client choose its secret: :func:`new_secret` makes one with 256
bits of entropy, it is returned once at registration, and only a slow,
salted hash is stored (:func:`hash_secret`: scrypt, RFC 7914, with the
parameters written into the stored string so that they can be raised later
without invalidating old hashes). :func:`verify_secret` compares in constant
time.

Hashing costs tens of milliseconds of CPU by design; it runs in a worker
thread so that the event loop keeps serving. Every successful use is logged
as a warning (``event`` ``client_auth.legacy_secret``) and counted, so an
operator can see who still has to move to a key or an SVID
(``swim-as audit --event client_auth.legacy_secret``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from urllib.parse import unquote_plus

from swim_as.clientauth.base import (
    AuthenticatedClient,
    Credential,
    Credentials,
)
from swim_as.clients.model import CLIENT_SECRET_BASIC, CLIENT_SECRET_POST, Client
from swim_as.errors import InvalidClient
from swim_as.observability.audit import AuditBuffer

log = logging.getLogger("swim_as.clientauth")

__all__ = [
    "SCHEME",
    "ClientSecretAuthenticator",
    "hash_secret",
    "new_secret",
    "parse_basic",
    "verify_secret",
]

SCHEME = "scrypt"
# RFC 7914 §2 parameters: 16 MiB of memory per hash.
_N, _R, _P = 2**14, 8, 1
_SALT_BYTES = 16
_KEY_BYTES = 32
_MAX_MEMORY = 64 * 1024 * 1024


def new_secret() -> str:
    """A new client secret: 32 random bytes, base64url."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    """``scrypt$n$r$p$salt$hash`` (salt and hash unpadded base64url)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=n, r=r, p=p, dklen=_KEY_BYTES, maxmem=_MAX_MEMORY
    )
    return "$".join((SCHEME, str(n), str(r), str(p), _b64(salt), _b64(digest)))


_DECOY: list[str] = []


async def refuse_unknown(client_id: str, presented: str) -> InvalidClient:
    """The refusal for a secret sent for a client that does not exist.

    It costs what checking a real secret costs and reads the same, so that
    timing and wording do not tell which client_ids exist.
    """
    if not _DECOY:
        _DECOY.append(hash_secret(new_secret()))
    await asyncio.to_thread(verify_secret, _DECOY[0], presented)
    return InvalidClient(detail=f"no client registered as {client_id[:200]!r}")


def verify_secret(stored: str | None, presented: str) -> bool:
    """Whether ``presented`` is the secret ``stored`` was made from.

    A malformed or missing stored hash verifies nothing.
    """
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != SCHEME:
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            presented.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=_MAX_MEMORY,
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def parse_basic(header: str) -> tuple[str, str] | None:
    """``Authorization: Basic`` credentials (RFC 7617 §2, RFC 6749 §2.3.1).

    The client_id and secret are form-urlencoded before base64 encoding, as
    RFC 6749 §2.3.1 requires. Returns ``None`` when the header is not a
    well-formed Basic credential.
    """
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    try:
        client_id = unquote_plus(user, errors="strict")
        secret = unquote_plus(password, errors="strict")
    except UnicodeDecodeError:
        return None
    if not client_id or not secret:
        return None
    return client_id, secret


class ClientSecretAuthenticator:
    """``client_secret_basic`` or ``client_secret_post`` (RFC 6749 §2.3.1)."""

    def __init__(self, method: str, audit: AuditBuffer) -> None:
        if method not in (CLIENT_SECRET_BASIC, CLIENT_SECRET_POST):
            raise ValueError(f"not a client secret method: {method}")
        self.methods = frozenset({method})
        self.credential = (
            Credential.BASIC if method == CLIENT_SECRET_BASIC else Credential.POST
        )
        self._method = method
        self._audit = audit

    async def authenticate(
        self, client: Client, credentials: Credentials, evidence: object
    ) -> AuthenticatedClient:
        secret = evidence
        assert isinstance(secret, str)
        if not await asyncio.to_thread(verify_secret, client.secret_hash, secret):
            raise InvalidClient(
                detail=f"wrong client secret for {client.client_id!r}",
            )
        log.warning(
            "client authenticated with a client secret; move it to a key or an SVID",
            extra={
                "event": "client_auth.legacy_secret",
                "client_id": client.client_id,
                "auth_method": self._method,
            },
        )
        self._audit.add(
            "client_auth.legacy_secret",
            actor=client.client_id,
            client_id=client.client_id,
            detail={"auth_method": self._method},
        )
        return AuthenticatedClient(
            client=client,
            method=self._method,
            spiffe_id=None,
            certificate=None,
            not_after=None,
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
