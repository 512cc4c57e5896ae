"""Verify swim-as access tokens in a Python resource server (DESIGN flow 4).

One object per issuer; one call per request::

    verifier = TokenVerifier("https://auth.prod.example", "https://api.prod.example")
    claims = verifier.verify(token, client_certificate_der)

It checks what RFC 9068 §4 and RFC 8705 §3 ask of a resource server: the
``typ`` is ``at+jwt``; the signature verifies with a key of the issuer's JWKS,
picked by ``kid`` with an asymmetric ``alg`` the key fits; ``iss`` is the
issuer and ``aud`` names this resource; the token is within ``nbf``/``exp``
(with a small leeway); and when the token carries ``cnf.x5t#S256`` it equals
the SHA-256 thumbprint of the client certificate on the resource server's own
TLS connection. A token bound to a certificate is refused without one.

The JWKS URL comes from the issuer's RFC 8414 metadata, fetched once. The
JWKS is cached and fetched again only when a token names an unknown ``kid``,
at most once per ``refresh_interval``: swim-as publishes a new key before it
signs with it (D7), so verifiers that cache keep working through a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

# RFC 9068 §4: asymmetric algorithms only; swim-as signs with these (D6).
ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA")


class TokenRejected(Exception):
    """The token is not valid for this resource; ``reason`` says why.

    Answer it with RFC 6750 §3.1 ``401 invalid_token``; the reason is for
    the log, not for the client.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def certificate_thumbprint(certificate: bytes | str | x509.Certificate) -> str:
    """RFC 8705 §3.1 ``x5t#S256`` of a certificate (DER bytes, PEM text or
    a parsed certificate)."""
    if isinstance(certificate, x509.Certificate):
        der = certificate.public_bytes(serialization.Encoding.DER)
    elif isinstance(certificate, str):
        der = x509.load_pem_x509_certificate(certificate.encode()).public_bytes(
            serialization.Encoding.DER
        )
    else:
        der = certificate
    digest = hashlib.sha256(der).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class TokenVerifier:
    """Verifies access tokens of one issuer for one resource (audience)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        verify: str | bool | Any = True,
        leeway: int = 30,
        refresh_interval: float = 30.0,
        timeout: float = 5.0,
        fetch: Callable[[str], Mapping[str, Any]] | None = None,
    ) -> None:
        """
        Args:
            issuer: swim-as's issuer identifier, exactly as in its metadata.
            audience: this resource's URI, as clients ask for it.
            verify: how to verify swim-as's TLS certificate (httpx's
                ``verify``: True, a CA bundle path or an SSLContext).
            leeway: seconds of clock skew tolerated on ``exp`` and ``nbf``.
            refresh_interval: the least time between two JWKS fetches
                caused by unknown ``kid`` values.
            fetch: GET a URL and return its JSON (for tests and custom
                transports); default: httpx with ``verify`` and ``timeout``.
        """
        self._issuer = issuer.rstrip("/")
        self._audience = audience
        self._leeway = leeway
        self._interval = refresh_interval
        self._fetch = fetch or _http_fetch(verify, timeout)
        self._lock = threading.Lock()
        self._jwks_uri: str | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")

    def verify(
        self, token: str, client_certificate: bytes | str | x509.Certificate | None
    ) -> dict[str, Any]:
        """The token's claims, or :class:`TokenRejected`.

        ``client_certificate`` is the certificate the client presented on
        this request's TLS connection (DER, PEM or parsed), or None.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as err:
            raise TokenRejected(f"not a JWS: {err}") from err
        if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise TokenRejected(f"typ {header.get('typ')!r} is not at+jwt")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenRejected(f"alg {alg!r} is not accepted")
        key = self._key(str(header.get("kid", "")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
            )
        except jwt.InvalidTokenError as err:
            raise TokenRejected(f"{type(err).__name__}: {err}") from err
        self._check_binding(claims, client_certificate)
        return claims

    def _check_binding(
        self,
        claims: Mapping[str, Any],
        certificate: bytes | str | x509.Certificate | None,
    ) -> None:
        """RFC 8705 §3: a bound token is only good with its certificate."""
        confirmation = claims.get("cnf")
        if confirmation is None:
            return
        if not isinstance(confirmation, dict) or "x5t#S256" not in confirmation:
            raise TokenRejected("cnf holds no x5t#S256")
        if certificate is None:
            raise TokenRejected("the token is bound to a certificate; none presented")
        if certificate_thumbprint(certificate) != confirmation["x5t#S256"]:
            raise TokenRejected("the presented certificate is not the bound one")

    def _key(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            return key
        with self._lock:
            key = self._keys.get(kid)
            if key is None and time.monotonic() - self._fetched_at >= self._interval:
                self._refresh()
                key = self._keys.get(kid)
        if key is None:
            raise TokenRejected(f"unknown kid {kid[:80]!r}")
        return key

    def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            self._load()
        except (httpx.HTTPError, ValueError, KeyError) as err:
            # The keys in hand stay; a token they cannot verify is refused.
            raise TokenRejected(f"issuer keys unavailable: {err!r}") from err

    def _load(self) -> None:
        if self._jwks_uri is None:
            metadata = self._fetch(
                self._issuer + "/.well-known/oauth-authorization-server"
            )
            if metadata.get("issuer") != self._issuer:
                raise TokenRejected("the metadata names another issuer (RFC 8414 §3.3)")
            self._jwks_uri = str(metadata["jwks_uri"])
        document = self._fetch(self._jwks_uri)
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", []):
            if not isinstance(entry, dict) or "kid" not in entry:
                continue
            try:
                keys[str(entry["kid"])] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key this verifier cannot use
        self._keys = keys


def _http_fetch(verify: Any, timeout: float) -> Callable[[str], Mapping[str, Any]]:
    def fetch(url: str) -> Mapping[str, Any]:
        response = httpx.get(url, verify=verify, timeout=timeout)
        response.raise_for_status()
        document = json.loads(response.content)
        if not isinstance(document, dict):
            raise TokenRejected(f"{url} did not return a JSON object")
        return document

    return fetch
