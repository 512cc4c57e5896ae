"""``self_signed_tls_client_auth`` (RFC 8705 §2.2) and its handshake store.

The client registers its certificate(s) as JWKs with ``x5c``, in ``jwks``
or behind a ``jwks_uri``. It authenticates when the leaf of the live
handshake is, byte for byte (DER), the ``x5c[0]`` of one of those JWKs;
the JWK's key members were checked against that certificate when the set
was read (§2.2.2). No chain is validated (§2.2); the certificate must be
within its validity period, and the token is bound to it and expires no
later than its ``notAfter``.

Such certificates are issued by no trust domain, so OpenSSL would refuse
them in the handshake. :class:`SelfSignedCertificates` keeps the registered
ones (``VERIFY_X509_PARTIAL_CHAIN`` makes each an anchor of itself) and
asks for a new TLS context when they change: on a client change
notification it reloads that one client, so the list is cheap to keep
current; ``jwks_uri`` clients are refetched every cache period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from swim_as.clientauth.base import (
    AuthenticatedClient,
    Credential,
    Credentials,
)
from swim_as.clientauth.client_keys import ClientKeys, KeysUnavailable
from swim_as.clients.model import SELF_SIGNED_TLS_CLIENT_AUTH, Client
from swim_as.clock import Clock
from swim_as.errors import InvalidClient

log = logging.getLogger("swim_as.clientauth")


class SelfSignedAuthenticator:
    """RFC 8705 §2.2: the presented certificate is a registered one."""

    methods = frozenset({SELF_SIGNED_TLS_CLIENT_AUTH})
    credential = Credential.CERTIFICATE

    def __init__(self, keys: ClientKeys, clock: Clock) -> None:
        self._keys = keys
        self._clock = clock

    async def authenticate(
        self, client: Client, credentials: Credentials, evidence: object
    ) -> AuthenticatedClient:
        certificate = credentials.certificate
        if certificate is None or not certificate.proven:
            raise InvalidClient(
                "client certificate required",
                detail=f"no proven client certificate; client_id={client.client_id!r}",
            )
        leaf = certificate.leaf
        der = leaf.public_bytes(Encoding.DER)
        if not await self._registered(client, der, refresh=False) and not (
            "jwks_uri" in client.metadata
            and await self._registered(client, der, refresh=True)
        ):
            raise InvalidClient(
                "certificate does not match a registered certificate",
                detail=(
                    f"x5t#S256={certificate.thumbprint} is not registered for "
                    f"{client.client_id!r}"
                ),
            )
        now = self._clock.now()
        if not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
            raise InvalidClient(
                "client certificate is expired or not yet valid",
                detail=(
                    f"x5t#S256={certificate.thumbprint} valid "
                    f"{leaf.not_valid_before_utc.isoformat()} to "
                    f"{leaf.not_valid_after_utc.isoformat()}"
                ),
            )
        return AuthenticatedClient(
            client=client,
            method=SELF_SIGNED_TLS_CLIENT_AUTH,
            spiffe_id=None,
            certificate=certificate,
            not_after=leaf.not_valid_after_utc.timestamp(),
        )

    async def _registered(self, client: Client, der: bytes, *, refresh: bool) -> bool:
        try:
            keys = await self._keys.of(client, require_x5c=True, refresh=refresh)
        except KeysUnavailable as err:
            raise InvalidClient(
                "client keys are not available", detail=str(err)
            ) from err
        return der in keys.certificates()


class SelfSignedReader(Protocol):
    async def get(self, client_id: str) -> Client | None: ...

    async def with_method(self, method: str) -> list[Client]: ...


class SelfSignedCertificates:
    """Registered self-signed client certificates, for the handshake store."""

    def __init__(
        self,
        reader: SelfSignedReader,
        keys: ClientKeys,
        *,
        on_change: Callable[[], None],
        refresh_seconds: float,
    ) -> None:
        self._reader = reader
        self._keys = keys
        self._on_change = on_change
        self._refresh_seconds = max(refresh_seconds, 5.0)
        self._by_client: dict[str, tuple[bytes, ...]] = {}
        self._pending: set[str] = set()
        self._reload_all = False
        self._wake = asyncio.Event()

    def certificates(self) -> list[x509.Certificate]:
        """Every registered certificate, once each."""
        unique = {der for ders in self._by_client.values() for der in ders}
        return [x509.load_der_x509_certificate(der) for der in sorted(unique)]

    async def load_all(self, *, fetch: bool = True) -> None:
        """Read every self-signed client (start-up, lost notifications).

        Without ``fetch``, ``jwks_uri`` clients keep what was loaded before
        (start-up loads inline sets at once and fetches in the background).
        """
        clients = await self._reader.with_method(SELF_SIGNED_TLS_CLIENT_AUTH)
        loaded: dict[str, tuple[bytes, ...]] = {}
        for client in clients:
            ders = await self._certificates_of(client, fetch=fetch)
            if ders is None:
                ders = self._by_client.get(client.client_id, ())
            if ders:
                loaded[client.client_id] = ders
        changed = loaded != self._by_client
        self._by_client = loaded
        if changed:
            self._on_change()

    async def reload(self, client_id: str) -> None:
        """Read one client again after a change notification."""
        client = await self._reader.get(client_id)
        before = self._by_client.get(client_id, ())
        ders: tuple[bytes, ...] | None = ()
        if client is not None and client.auth_method == SELF_SIGNED_TLS_CLIENT_AUTH:
            ders = await self._certificates_of(client, fetch=True)
        if ders is None:
            return  # keys unavailable for now: keep what was there
        if ders:
            self._by_client[client_id] = ders
        else:
            self._by_client.pop(client_id, None)
        if ders != before:
            self._on_change()

    def on_change(self, topic: str, key: str) -> None:
        """Change-feed subscriber: note what to reload; the task does it."""
        if topic == "*":
            self._reload_all = True
        elif topic == "client":
            self._pending.add(key)
        else:
            return
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Background task: apply notifications, refetch ``jwks_uri`` sets."""
        loop = asyncio.get_running_loop()
        next_full = loop.time()  # fetch the jwks_uri sets at once
        while not stop.is_set():
            timeout = max(0.0, next_full - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            self._wake.clear()
            if stop.is_set():
                return
            try:
                if self._reload_all or loop.time() >= next_full:
                    self._reload_all, self._pending = False, set()
                    next_full = loop.time() + self._refresh_seconds
                    await self.load_all()
                while self._pending:
                    await self.reload(self._pending.pop())
            except Exception as err:  # keep serving with what is loaded
                log.warning(
                    "self-signed certificates not reloaded",
                    extra={"event": "client_keys.reload_failed", "reason": repr(err)},
                )

    async def _certificates_of(
        self, client: Client, *, fetch: bool
    ) -> tuple[bytes, ...] | None:
        """DER of the client's certificates; None when not available now."""
        if not fetch and "jwks" not in client.metadata:
            return None
        try:
            keys = await self._keys.of(client, require_x5c=True)
        except KeysUnavailable as err:
            log.warning(
                "self-signed client's certificates unavailable",
                extra={
                    "event": "client_keys.unavailable",
                    "client_id": client.client_id,
                    "reason": str(err),
                },
            )
            return None
        return tuple(sorted(keys.certificates()))
