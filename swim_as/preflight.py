"""Checks run once before serving, so a bad configuration fails in one line.

Worker processes would otherwise each hit the same broken file, crash and be
restarted; here the cause is found first, in the parent, and named with the
setting and the absolute path.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from swim_as.settings import Settings
from swim_as.spiffe.errors import BundleError, SpiffeError
from swim_as.spiffe.ids import TrustDomain
from swim_as.trust.files import FileBundleSource


class PreflightError(Exception):
    """The configuration cannot be served; the message says what to fix."""


def check_tls(settings: Settings) -> None:
    cert, key = settings.tls.cert_file, settings.tls.key_file
    if settings.tls.source != "files" or cert is None or key is None:
        # From the Workload API, or plain HTTP behind a proxy (which
        # Settings.serving_problems() allows or refuses).
        return
    for name, path in (("tls.cert_file", cert), ("tls.key_file", key)):
        _readable(name, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as err:
        raise PreflightError(
            f"tls.cert_file {cert.resolve()} and tls.key_file {key.resolve()} do not "
            f"form a certificate and its key: {err.reason or err}"
        ) from err


def check_bundles(settings: Settings) -> None:
    if not settings.trust_domains:
        raise PreflightError(
            "no [[trust_domains]] configured: no workload could authenticate"
        )
    for domain in settings.trust_domains:
        try:
            td = TrustDomain.parse(domain.name)
        except SpiffeError as err:
            raise PreflightError(f"trust_domains: {err}") from err
        for name, path in (
            ("bundle_file", domain.bundle_file),
            ("jwt_bundle_file", domain.jwt_bundle_file),
        ):
            if path is not None:
                _readable(f"trust domain {domain.name}: {name}", path)
        source = FileBundleSource(td, domain.bundle_file, domain.jwt_bundle_file)
        try:
            source.read()
        except BundleError as err:
            raise PreflightError(f"trust domain {domain.name}: {err}") from err


def check_kek(settings: Settings) -> bytes:
    try:
        return settings.keys.load_kek()
    except OSError as err:
        path = settings.keys.encryption_key_file
        where = path.resolve() if path else "keys.encryption_key_file"
        raise PreflightError(
            f"keys.encryption_key_file {where}: {err.strerror or err}"
        ) from err
    except ValueError as err:
        raise PreflightError(str(err)) from err


async def check_keys(settings: Settings, kek: bytes) -> None:
    """The KEK must open the keys already stored (a wrong KEK is fatal)."""
    from swim_as.keys.keyring import kek_problem

    problem = await kek_problem(settings.database.url, kek)
    if problem:
        raise PreflightError(problem)


def _readable(name: str, path: Path) -> None:
    resolved = path.resolve()
    if not resolved.exists():
        raise PreflightError(f"{name}: {resolved} does not exist")
    if not resolved.is_file():
        raise PreflightError(f"{name}: {resolved} is not a file")
    try:
        with resolved.open("rb"):
            pass
    except OSError as err:
        raise PreflightError(f"{name}: {resolved}: {err.strerror}") from err
