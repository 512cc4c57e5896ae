"""One swim-as server process: settings → TLS contexts + application → serve.

:func:`served_app` is module-level and takes only the settings, so the
server runner can pickle it for worker processes; each worker builds its own
application, TLS contexts and database pool, and they all sign with the same
key from the database (D7).
"""

from __future__ import annotations

import functools
import ssl

from swim_as.app import build_services, create_app
from swim_as.server import ServedApp, run
from swim_as.settings import Settings
from swim_as.tls import TlsContextManager

MIN_VERSION = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def served_app(settings: Settings) -> ServedApp:
    """Build the application and the TLS contexts of one process.

    Raises:
        ServingCertificateError: swim-as's own certificate cannot be had
            (``tls.source = "workload_api"`` and the Workload API does not
            answer).
    """
    services = build_services(settings)
    assert services.serving_cert is not None
    # The serving certificate is followed by this process's lifespan; the
    # client authorities arrive when it loads the trust bundles.
    cert_file, key_file = services.serving_cert.initial_files()
    tls = TlsContextManager(
        cert_file, key_file, (), min_version=MIN_VERSION[settings.tls.min_version]
    )
    return ServedApp(create_app(settings, tls=tls, services=services), tls)


def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    run(
        functools.partial(served_app, settings),
        host=settings.server.host,
        port=settings.server.port,
        workers=settings.server.workers,
        access_log=settings.server.access_log,
        log_config=None,
    )
