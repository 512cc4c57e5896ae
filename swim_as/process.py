"""One swim-as server process: settings → TLS contexts + application → serve.

:func:`served_app` is module-level and takes only the settings, so the
server runner can pickle it for worker processes; each worker builds its own
application, TLS contexts and database pool, and they all sign with the same
key from the database (D7).
"""

from __future__ import annotations

import functools
import logging
import ssl

from swim_as.app import Services, build_services, create_listener_apps
from swim_as.observability.logs import configure_logging
from swim_as.server import Listener, ServedApp, run
from swim_as.settings import Settings
from swim_as.tls import TlsContextManager

MIN_VERSION = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

log = logging.getLogger("swim_as.process")


class ListenerConfigError(ValueError):
    """The settings cannot serve (see ``Settings.serving_problems``)."""


def tls_contexts(
    settings: Settings, services: Services
) -> tuple[TlsContextManager | None, TlsContextManager | None]:
    """The TLS contexts of the main listener (``None``: plain HTTP behind a
    proxy, mesh mode) and of the separate mTLS listener, if configured.

    The serving certificate comes from files or the Workload API and is
    followed by this process's lifespan; client authorities arrive when it
    loads the trust bundles.

    Raises:
        ListenerConfigError: the settings cannot serve.
    """
    problems = settings.serving_problems()
    if problems:
        raise ListenerConfigError("; ".join(problems))
    tls = settings.tls
    if services.serving_cert is None:
        return None, None
    cert_file, key_file = services.serving_cert.initial_files()
    main = TlsContextManager(
        cert_file,
        key_file,
        (),
        min_version=MIN_VERSION[tls.min_version],
        # D5: in mesh mode the handshake certificate only ever identifies
        # the proxy, so it is asked for only when proxy SPIFFE IDs are
        # checked; source 'none' asks for nothing.
        request_client_certificate=_main_listener_asks(settings),
    )
    mtls = None
    if settings.server.mtls is not None:
        mtls = TlsContextManager(
            cert_file, key_file, (), min_version=MIN_VERSION[tls.min_version]
        )
    return main, mtls


def _main_listener_asks(settings: Settings) -> bool:
    source = settings.server.client_certificate_source
    if source == "tls":
        return True
    if source == "none":
        return False
    return settings.mesh is not None and bool(settings.mesh.proxy_spiffe_ids)


def served_app(settings: Settings) -> ServedApp:
    """Build the applications and the TLS contexts of one process.

    Worker processes start with ``spawn``: logging is configured here again
    so that every process logs the same way.

    Raises:
        ServingCertificateError: swim-as's own certificate cannot be had
            (``tls.source = "workload_api"`` and the Workload API does not
            answer).
    """
    configure_logging(settings.logging.level, settings.logging.format)
    services = build_services(settings)
    main_tls, mtls_tls = tls_contexts(settings, services)
    apps = create_listener_apps(
        settings, tls=main_tls, mtls_tls=mtls_tls, services=services
    )
    also: tuple[Listener, ...] = ()
    if apps.mtls is not None:
        also = (Listener(apps.mtls, mtls_tls),)
    if main_tls is None:
        log.info(
            "Serving plain HTTP on %s:%d: TLS is terminated by the proxy in front",
            settings.server.host,
            settings.server.port,
            extra={"event": "server.plaintext"},
        )
    return ServedApp(apps.main, main_tls, also)


def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    mtls = settings.server.mtls
    run(
        functools.partial(served_app, settings),
        host=settings.server.host,
        port=settings.server.port,
        workers=settings.server.workers,
        access_log=settings.server.access_log,
        log_config=None,
        also_listen=((mtls.host, mtls.port),) if mtls is not None else (),
    )
