"""The application factory: settings in, ASGI application out.

:func:`create_app` wires the services from one :class:`Settings` value; no
module keeps global state. Start-up work (loading bundles and keys, listening
for changes) runs in the lifespan, so importing swim-as never touches the
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from cryptography import x509
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from swim_as.clientauth.authenticate import ClientAuthenticator
from swim_as.clientauth.presented import CertificateParser
from swim_as.clients.directory import ClientDirectory
from swim_as.clients.metadata import SPIFFE_METHODS
from swim_as.clients.model import SPIFFE_JWT, SPIFFE_X509, TLS_CLIENT_AUTH
from swim_as.clients.registration import ManagementService, RegistrationService
from swim_as.clock import Clock, SystemClock
from swim_as.errors import OAuthError, ServerError, TemporarilyUnavailable
from swim_as.grants.client_credentials import ClientCredentialsGrant
from swim_as.http.discovery import (
    JWKS_PATH,
    METADATA_PATH,
    OPENID_PATH,
    REGISTER_PATH,
    TOKEN_PATH,
    DiscoveryRoutes,
    build_metadata,
)
from swim_as.http.middleware import PresentedCertificateMiddleware
from swim_as.http.register import RegistrationRoutes
from swim_as.http.responses import error_parts, log_refusal
from swim_as.http.token import TokenEndpoint
from swim_as.keys.keyring import Keyring, KeyRotator, RotationPolicy, follow_keys
from swim_as.lifecycle import SEEN_TASK, Lifecycle, build_lifecycle, start_lifecycle
from swim_as.observability.audit import AuditBuffer
from swim_as.settings import Settings
from swim_as.spiffe.ids import TrustDomain
from swim_as.storage.clients import SqlClientRepository
from swim_as.storage.db import Database
from swim_as.tokens.minter import TokenMinter
from swim_as.trust.files import FileBundleSource
from swim_as.trust.store import TrustStore

log = logging.getLogger("swim_as.app")

# How often bundle files are checked for a change.
BUNDLE_POLL_SECONDS = 1.0
# How often keys are re-read even without a notification (D11 bound).
KEY_POLL_SECONDS = 5.0


class HandshakeTrust(Protocol):
    """The TLS layer's view: which client CAs new handshakes accept."""

    def update(self, *, client_authorities: list[x509.Certificate]) -> None: ...


@dataclass
class Services:
    """Every long-lived object of one process, wired once."""

    settings: Settings
    clock: Clock
    db: Database
    trust: TrustStore
    bundle_sources: list[FileBundleSource]
    keyring: Keyring
    rotator: KeyRotator
    clients: SqlClientRepository
    directory: ClientDirectory
    authenticator: ClientAuthenticator
    registration: RegistrationService
    management: ManagementService
    audit: AuditBuffer
    parser: CertificateParser
    metadata: dict[str, Any]
    lifecycle: Lifecycle
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def rotation_policy(settings: Settings) -> RotationPolicy:
    keys = settings.keys
    return RotationPolicy(
        algorithm=keys.algorithm,
        publish_lead=timedelta(seconds=keys.publish_lead_seconds),
        retain=timedelta(seconds=keys.retain_seconds(settings.tokens.lifetime_seconds)),
        rotate_every=(
            timedelta(seconds=keys.rotate_every_seconds)
            if keys.rotate_every_seconds
            else None
        ),
    )


def build_services(settings: Settings, *, clock: Clock | None = None) -> Services:
    """Construct the services; nothing runs until :func:`start` is awaited."""
    clock = clock or SystemClock()
    db = Database(
        settings.database.url,
        pool_size=settings.database.pool_size,
        echo=settings.database.echo,
    )
    trust = TrustStore(clock)
    sources = []
    for domain in settings.trust_domains:
        td = TrustDomain.parse(domain.name)
        trust.add_domain(td)
        sources.append(FileBundleSource(td, domain.bundle_file, domain.jwt_bundle_file))
    kek = settings.keys.load_kek()
    keyring = Keyring(db, kek, clock)
    rotator = KeyRotator(db, kek, clock, rotation_policy(settings))
    repository = SqlClientRepository(db)
    directory = ClientDirectory(repository, clock, watched=lambda: db.listening)
    db.subscribe(directory.on_change)
    methods = enabled_methods(settings)
    registration = RegistrationService(
        db,
        repository,
        clock,
        issuer=settings.issuer,
        enabled_methods=frozenset(methods),
        self_registration=settings.registration.self_registration,
    )
    lifecycle = build_lifecycle(
        settings,
        db=db,
        clock=clock,
        repository=repository,
        registration=registration,
        lookup=directory.get,
    )
    authenticator = ClientAuthenticator(
        trust, directory.get, on_missing_client=lifecycle.jit
    )
    return Services(
        settings=settings,
        clock=clock,
        db=db,
        trust=trust,
        bundle_sources=sources,
        keyring=keyring,
        rotator=rotator,
        clients=repository,
        directory=directory,
        authenticator=authenticator,
        registration=registration,
        management=ManagementService(registration),
        audit=AuditBuffer(db, clock),
        parser=CertificateParser(),
        metadata=build_metadata(settings.issuer, auth_methods=methods),
        lifecycle=lifecycle,
    )


def enabled_methods(settings: Settings) -> list[str]:
    """Token endpoint auth methods that can succeed here (D2, D13)."""
    methods = [TLS_CLIENT_AUTH, SPIFFE_X509]
    assert set(methods) <= SPIFFE_METHODS and SPIFFE_JWT in SPIFFE_METHODS
    return methods


async def start(services: Services, tls: HandshakeTrust | None = None) -> None:
    """Load bundles and keys, then follow changes in the background."""
    if tls is not None:
        authorities = services.trust.x509_authorities

        def push(_: TrustDomain) -> None:
            tls.update(client_authorities=authorities())

        services.trust.on_change(push)
    for source in services.bundle_sources:
        source.load_into(services.trust, initial=True)
    await services.rotator.ensure_initial_key()
    await services.keyring.load()
    services.db.subscribe(_key_listener(services))
    await services.db.start_listening()
    stop = services.stop
    services.tasks = [
        asyncio.create_task(_watch_bundles(services), name="swim-as-bundles"),
        asyncio.create_task(
            follow_keys(
                services.keyring,
                services.rotator,
                poll_seconds=KEY_POLL_SECONDS,
                stop=stop,
            ),
            name="swim-as-keys",
        ),
        asyncio.create_task(services.audit.run(stop), name="swim-as-audit"),
    ]
    services.tasks += await start_lifecycle(services.lifecycle, services.settings, stop)
    log.info(
        "swim-as ready",
        extra={
            "event": "server.ready",
            "issuer": services.settings.issuer,
            "trust_domains": [str(s.trust_domain) for s in services.trust.domains()],
        },
    )


async def stop(services: Services) -> None:
    services.stop.set()
    for task in services.tasks:
        # These write what is still queued when they see the stop.
        if task.get_name() in ("swim-as-audit", SEEN_TASK):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=5)
        task.cancel()
    for task in services.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await services.db.close()


def _key_listener(services: Services) -> Any:
    def on_change(topic: str, key: str) -> None:
        if topic in ("keys", "*"):
            services.tasks.append(
                asyncio.get_running_loop().create_task(services.keyring.load())
            )

    return on_change


async def _watch_bundles(services: Services) -> None:
    while not services.stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(services.stop.wait(), timeout=BUNDLE_POLL_SECONDS)
        for source in services.bundle_sources:
            if source.changed():
                source.load_into(services.trust)


async def readiness(services: Services) -> dict[str, Any]:
    """What ``/readyz`` reports: database, signing key, bundles."""
    problems: list[str] = []
    try:
        await asyncio.wait_for(services.db.ping(), timeout=2)
    except Exception as err:
        problems.append(f"database unreachable: {type(err).__name__}")
    if not services.keyring.has_signer():
        problems.append("no active signing key")
    domains = {}
    for state in services.trust.domains():
        fine = not state.expired and (state.x509 is not None or state.jwt is not None)
        domains[str(state.trust_domain)] = {
            "ok": fine,
            "error": state.error,
            "generation": state.generation,
        }
        if not fine:
            problems.append(
                f"trust domain {state.trust_domain}: {state.error or 'no bundle'}"
            )
    return {"ready": not problems, "problems": problems, "trust_domains": domains}


class _FastPath:
    """Sends ``/token`` straight to its endpoint, the rest to FastAPI.

    It is also the last line of defence: an exception that escapes the
    application is logged here once, with its trace, and never reaches the
    client (D9); FastAPI has already answered with a JSON server_error.
    """

    def __init__(self, token: TokenEndpoint, app: Any) -> None:
        self._token = token
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == TOKEN_PATH:
            await self._token(scope, receive, send)
            return
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        try:
            await self._app(scope, receive, send)
        except Exception:
            log.error(
                "unexpected error",
                exc_info=True,
                extra={"event": "server.error", "path": scope.get("path")},
            )


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    tls: HandshakeTrust | None = None,
    services: Services | None = None,
) -> Any:
    """Build the ASGI application of one swim-as process."""
    services = services or build_services(settings, clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await start(services, tls)
        try:
            yield
        finally:
            await stop(services)

    api = FastAPI(
        title="swim-as",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    api.state.services = services
    # The policy decider when a policy file is configured, else the
    # operator's grants (D8).
    decider = services.lifecycle.decider
    minter = TokenMinter(settings.issuer, services.keyring, services.clock)
    token = TokenEndpoint(
        services.authenticator,
        ClientCredentialsGrant(decider, minter),
        services.audit,
        max_body=settings.server.max_body_bytes,
        on_issued=services.lifecycle.seen.record,
    )
    discovery = DiscoveryRoutes(
        services.metadata,
        services.keyring.jwks,
        lambda: readiness(services),
        jwks_max_age=settings.keys.jwks_max_age_seconds,
    )
    registration = RegistrationRoutes(
        services.registration,
        services.management,
        services.authenticator,
        max_body=settings.server.max_body_bytes,
        controlled=services.lifecycle.controlled,
    )
    api.add_route(METADATA_PATH, discovery.metadata, methods=["GET"])
    api.add_route(OPENID_PATH, discovery.metadata, methods=["GET"])
    api.add_route(JWKS_PATH, discovery.jwks, methods=["GET"])
    api.add_route("/healthz", discovery.healthz, methods=["GET"])
    api.add_route("/readyz", discovery.readyz, methods=["GET"])
    api.add_route(REGISTER_PATH, registration.register, methods=["POST"])
    api.add_route(REGISTER_PATH + "/{rest:path}", registration.read, methods=["GET"])
    api.add_route(REGISTER_PATH + "/{rest:path}", registration.replace, methods=["PUT"])
    api.add_route(
        REGISTER_PATH + "/{rest:path}", registration.delete, methods=["DELETE"]
    )
    _install_error_handlers(api)
    app = PresentedCertificateMiddleware(_FastPath(token, api), services.parser)
    return app


def _install_error_handlers(api: FastAPI) -> None:
    async def oauth_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OAuthError)
        log_refusal(
            _endpoint(request),
            exc,
            peer=request.client.host if request.client else None,
        )
        status, body, headers = error_parts(exc)
        return Response(
            body,
            status_code=status,
            media_type="application/json" if body else None,
            headers={k.decode(): v.decode() for k, v in headers},
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else "invalid_request"
        return JSONResponse(
            {"error": code, "error_description": str(exc.detail).lower()},
            status_code=exc.status_code,
            headers={**(exc.headers or {}), "Cache-Control": "no-store"},
        )

    async def database_error(request: Request, exc: Exception) -> Response:
        return await oauth_error(
            request, TemporarilyUnavailable(detail=f"database: {type(exc).__name__}")
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Logged once, with the trace, by _FastPath when it re-raises.
        status, body, headers = error_parts(ServerError())
        return Response(
            body,
            status_code=status,
            media_type="application/json",
            headers={k.decode(): v.decode() for k, v in headers},
        )

    api.add_exception_handler(OAuthError, oauth_error)
    api.add_exception_handler(HTTPException, http_error)
    api.add_exception_handler(OperationalError, database_error)
    api.add_exception_handler(DBAPIError, database_error)
    api.add_exception_handler(Exception, unexpected)


def _endpoint(request: Request) -> str:
    path = request.url.path
    if path.startswith(REGISTER_PATH):
        return "registration"
    return path.strip("/").replace("/", ".") or "root"
