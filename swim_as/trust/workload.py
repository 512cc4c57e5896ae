"""Bundles (and swim-as's own X.509-SVID) from the SPIFFE Workload API (D3).

The Workload API (SPIFFE Workload API §5-§6) is reached through py-spiffe's
``WorkloadApiClient`` over its unix socket. Two streams are followed:

- ``FetchX509SVID``: X.509 contexts, each with the workload's SVIDs, the
  bundle of its own trust domain and the federated bundles;
- ``FetchJWTBundles``: the JWT bundles of the same trust domains.

Each bundle goes into the trust domain it is keyed by and only if that
trust domain is configured for the Workload API; nothing is merged across
trust domains and bundles of other trust domains are ignored. Every bundle
is converted to swim-as's own types through the same parsers as a bundle
file (so a non-CA authority is refused the same way), then goes through
:class:`BundleUpdates` (ordering, logs, audit).

py-spiffe runs each stream on a thread of its own and calls back from it;
the callbacks only hand the message over to the event loop, where
everything else happens. Streams are opened without py-spiffe's own retries
so that every failure (agent gone, stream ended, a message py-spiffe cannot
parse) is reported, logged and audited; :class:`WorkloadApiWatcher` opens
the stream again after 1 s, doubling to 30 s, reset after a message.

Freshness: a stream sends a message only when something changes, so a
quiet, connected stream means the bundles are current. A trust domain is
confirmed fresh while both streams are up and the last X.509 context held
its bundle; while a stream is down, or the trust domain is missing from
it, its bundle's age grows towards the maximum age. A trust domain missing
from the JWT stream has no JWT keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from swim_as.spiffe.bundle import JwtBundle, X509Bundle, parse_bundle, parse_jwt_bundle
from swim_as.spiffe.errors import BundleError, SpiffeIdError
from swim_as.spiffe.ids import TrustDomain
from swim_as.trust.updates import BundleUpdates

if TYPE_CHECKING:
    # py-spiffe imports gRPC as soon as the package is imported; only
    # deployments that use the Workload API should pay for that.
    from spiffe.bundle.jwt_bundle.jwt_bundle_set import JwtBundleSet
    from spiffe.workloadapi.x509_context import X509Context

log = logging.getLogger("swim_as.trust")

X509, JWT = "x509", "jwt"
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


# -- adapters: py-spiffe values to swim-as bundles ------------------------------


def x509_bundles(
    context: X509Context, wanted: frozenset[TrustDomain]
) -> dict[TrustDomain, X509Bundle | BundleError]:
    """The X.509 bundles of an X.509 context, for the wanted trust domains.

    A trust domain the context does not hold is absent from the result;
    one whose authorities are not all CA certificates maps to the error.
    """
    out: dict[TrustDomain, X509Bundle | BundleError] = {}
    for bundle in context.x509_bundle_set.bundles:
        td = _ours(bundle.trust_domain.name)
        if td is None or td not in wanted:
            continue
        pem = b"".join(
            sorted(
                c.public_bytes(serialization.Encoding.PEM)
                for c in bundle.x509_authorities
            )
        )
        try:
            if not pem:
                out[td] = X509Bundle(td, ())
            else:
                out[td], _ = parse_bundle(pem, td)
        except BundleError as err:
            out[td] = err
    return out


def jwt_bundles(
    bundle_set: JwtBundleSet, wanted: frozenset[TrustDomain]
) -> dict[TrustDomain, JwtBundle | BundleError]:
    """The JWT bundles of a JWT bundle set, for the wanted trust domains.

    Keys are turned back into a JWK Set and read by the JWT bundle parser,
    so unsupported key types are skipped exactly as in a bundle file.
    """
    out: dict[TrustDomain, JwtBundle | BundleError] = {}
    for bundle in bundle_set.bundles:
        td = _ours(bundle.trust_domain.name)
        if td is None or td not in wanted:
            continue
        keys = [_jwk(kid, key) for kid, key in sorted(bundle.jwt_authorities.items())]
        document = json.dumps({"keys": keys}).encode()
        try:
            out[td] = parse_jwt_bundle(document, td)
        except BundleError as err:
            out[td] = err
    return out


def _ours(name: str) -> TrustDomain | None:
    try:
        return TrustDomain.parse(name)
    except SpiffeIdError:
        return None


def _jwk(kid: str, key: Any) -> dict[str, Any]:
    entry: dict[str, Any]
    if isinstance(key, ec.EllipticCurvePublicKey):
        entry = dict(pyjwt.get_algorithm_by_name("ES256").to_jwk(key, as_dict=True))
    elif isinstance(key, rsa.RSAPublicKey):
        entry = dict(pyjwt.get_algorithm_by_name("RS256").to_jwk(key, as_dict=True))
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        entry = dict(pyjwt.get_algorithm_by_name("EdDSA").to_jwk(key, as_dict=True))
    else:
        # An unknown kty is skipped by the parser (SPIFFE bundle §4.2.1).
        entry = {"kty": type(key).__name__}
    entry.update(kid=kid, use="jwt-svid")
    entry.pop("alg", None)
    return entry


# -- the streams ------------------------------------------------------------------


class StreamHandle(Protocol):
    def cancel(self) -> None: ...


class WorkloadClient(Protocol):
    """The part of py-spiffe's ``WorkloadApiClient`` swim-as uses."""

    def stream_x509_contexts(
        self,
        on_success: Callable[[X509Context], None],
        on_error: Callable[[Exception], None],
        retry_connect: bool = ...,
    ) -> Any: ...

    def stream_jwt_bundles(
        self,
        on_success: Callable[[JwtBundleSet], None],
        on_error: Callable[[Exception], None],
        retry_connect: bool = ...,
    ) -> Any: ...

    def close(self) -> None: ...


def default_client(socket: str) -> WorkloadClient:
    """py-spiffe's client for ``socket`` (``unix:///path``).

    Raises:
        spiffe.errors.ArgumentError: the socket is malformed or absent.
    """
    from spiffe.workloadapi.workload_api_client import WorkloadApiClient

    return WorkloadApiClient(socket)


X509Listener = Callable[["X509Context"], None]
JwtListener = Callable[["JwtBundleSet"], None]
ErrorListener = Callable[[str, str], None]


class WorkloadApiWatcher:
    """Follows the X.509 and JWT streams of one Workload API socket."""

    def __init__(
        self,
        socket: str,
        *,
        jwt: bool = True,
        client_factory: Callable[[str], WorkloadClient] = default_client,
    ) -> None:
        self.socket = socket
        self._kinds = (X509, JWT) if jwt else (X509,)
        self._client_factory = client_factory
        self._client: WorkloadClient | None = None
        self._handles: dict[str, Any] = {}
        self._up: dict[str, bool] = dict.fromkeys(self._kinds, False)
        self._failures: dict[str, int] = dict.fromkeys(self._kinds, 0)
        self._retry_at: dict[str, float] = dict.fromkeys(self._kinds, 0.0)
        self._first: dict[str, asyncio.Event] = {
            k: asyncio.Event() for k in self._kinds
        }
        self._x509_listeners: list[X509Listener] = []
        self._jwt_listeners: list[JwtListener] = []
        self._error_listeners: list[ErrorListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self.last_x509: X509Context | None = None

    def need_jwt(self) -> None:
        """Also follow the JWT bundles stream (before :meth:`run`)."""
        if JWT not in self._kinds:
            self._kinds = (X509, JWT)
            self._up[JWT], self._failures[JWT], self._retry_at[JWT] = False, 0, 0.0
            self._first[JWT] = asyncio.Event()

    def on_x509(self, listener: X509Listener) -> None:
        self._x509_listeners.append(listener)

    def on_jwt(self, listener: JwtListener) -> None:
        self._jwt_listeners.append(listener)

    def on_error(self, listener: ErrorListener) -> None:
        """``listener(kind, message)`` for every stream failure."""
        self._error_listeners.append(listener)

    @property
    def healthy(self) -> bool:
        """Every stream delivered a message and has not failed since."""
        return all(self._up.values())

    async def wait_first(self, seconds: float) -> bool:
        """Wait until every stream delivered a first message, at most
        ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                for event in self._first.values():
                    await event.wait()
        except TimeoutError:
            return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Background task: keep both streams open until ``stop``."""
        self._loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self._open_due()
                self._wake.clear()
                waiters = [
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self._wake.wait()),
                ]
                try:
                    await asyncio.wait(
                        waiters,
                        timeout=self._next_retry_delay(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            self.close()

    def close(self) -> None:
        for handle in self._handles.values():
            with contextlib.suppress(Exception):
                handle.cancel()
        self._handles.clear()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def _next_retry_delay(self) -> float:
        now = time.monotonic()
        waiting = [
            self._retry_at[k] - now for k in self._kinds if k not in self._handles
        ]
        return max(0.05, min(waiting)) if waiting else 3600.0

    def _open_due(self) -> None:
        now = time.monotonic()
        for kind in self._kinds:
            if kind in self._handles or self._retry_at[kind] > now:
                continue
            if self._client is None:
                try:
                    self._client = self._client_factory(self.socket)
                except Exception as err:
                    for k in self._kinds:
                        if k not in self._handles:
                            self._failed(k, f"cannot reach the Workload API: {err}")
                    return
            try:
                self._handles[kind] = self._open(kind, self._client)
            except Exception as err:
                self._failed(kind, f"cannot open the {kind} stream: {err}")

    def _open(self, kind: str, client: WorkloadClient) -> Any:
        loop = self._loop
        assert loop is not None

        def hand_over(handler: Callable[..., None], *args: Any) -> None:
            # Runs on py-spiffe's thread: only schedule, never touch state.
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(handler, *args)

        if kind == X509:
            return client.stream_x509_contexts(
                lambda ctx: hand_over(self._got_x509, ctx),
                lambda err: hand_over(self._stream_error, X509, err),
                retry_connect=False,
            )
        return client.stream_jwt_bundles(
            lambda bundles: hand_over(self._got_jwt, bundles),
            lambda err: hand_over(self._stream_error, JWT, err),
            retry_connect=False,
        )

    def _got_x509(self, context: X509Context) -> None:
        self._succeeded(X509)
        self.last_x509 = context
        for listener in self._x509_listeners:
            _call(listener, context)

    def _got_jwt(self, bundles: JwtBundleSet) -> None:
        self._succeeded(JWT)
        for listener in self._jwt_listeners:
            _call(listener, bundles)

    def _succeeded(self, kind: str) -> None:
        self._up[kind] = True
        self._failures[kind] = 0
        self._first[kind].set()

    def _stream_error(self, kind: str, err: Exception) -> None:
        handle = self._handles.pop(kind, None)
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.cancel()
        self._failed(kind, f"Workload API {kind} stream failed: {err}")
        self._wake.set()

    def _failed(self, kind: str, message: str) -> None:
        self._up[kind] = False
        self._failures[kind] += 1
        delay = min(
            FIRST_RETRY_SECONDS * 2 ** min(self._failures[kind] - 1, 10),
            MAX_RETRY_SECONDS,
        )
        self._retry_at[kind] = time.monotonic() + delay
        log.warning(
            "%s; retrying in %.0f s",
            message,
            delay,
            extra={
                "event": "workload_api.stream_failed",
                "socket": self.socket,
                "stream": kind,
            },
        )
        for listener in self._error_listeners:
            _call(listener, kind, message)


def _call(listener: Callable[..., None], *args: Any) -> None:
    try:
        listener(*args)
    except Exception:  # one bad listener must not stop the stream
        log.exception(
            "Workload API listener failed", extra={"event": "workload_api.error"}
        )


class WorkloadApiBundleSource:
    """The trust domains configured to take their bundles from one socket."""

    def __init__(
        self,
        watcher: WorkloadApiWatcher,
        trust_domains: frozenset[TrustDomain],
        updates: BundleUpdates,
    ) -> None:
        self.watcher = watcher
        self.trust_domains = trust_domains
        self.updates = updates
        self._present: set[TrustDomain] = set()
        watcher.need_jwt()
        watcher.on_x509(self._on_x509)
        watcher.on_jwt(self._on_jwt)
        watcher.on_error(self._on_error)

    @property
    def origin(self) -> str:
        return self.watcher.socket

    def _on_x509(self, context: X509Context) -> None:
        found = x509_bundles(context, self.trust_domains)
        self._present = set()
        for td in sorted(self.trust_domains, key=lambda t: t.name):
            bundle = found.get(td)
            if bundle is None:
                self.updates.refuse(
                    td,
                    "missing",
                    "the Workload API sent no X.509 bundle for this trust domain",
                    origin=self.origin,
                )
            elif isinstance(bundle, BundleError):
                self.updates.refuse(td, bundle.reason, str(bundle), origin=self.origin)
            else:
                self._present.add(td)
                self.updates.apply(td, x509=bundle, origin=self.origin)

    def _on_jwt(self, bundles: JwtBundleSet) -> None:
        found = jwt_bundles(bundles, self.trust_domains)
        for td in sorted(self.trust_domains, key=lambda t: t.name):
            bundle = found.get(td, JwtBundle(td, {}))
            if isinstance(bundle, BundleError):
                self.updates.refuse(td, bundle.reason, str(bundle), origin=self.origin)
            elif self.updates.store.state(td) is not None:
                self.updates.apply(td, jwt=bundle, origin=self.origin)

    def _on_error(self, kind: str, message: str) -> None:
        for td in sorted(self.trust_domains, key=lambda t: t.name):
            self.updates.refuse(td, "workload_api", message, origin=self.origin)

    def tick(self) -> None:
        """Confirm the bundles of a healthy stream (called every second)."""
        if not self.watcher.healthy:
            return
        for td in self._present:
            self.updates.confirm(td)
