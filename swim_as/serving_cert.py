"""swim-as's own serving certificate, followed without a restart.

Two sources (``[tls] source``):

- ``files``: ``tls.cert_file`` and ``tls.key_file``, polled every second
  for a change of inode, size or modification time (atomic replacement, as
  cert-manager, spiffe-helper and Kubernetes volumes do it). A pair that
  does not load (a key that does not match, a half-written file) leaves the
  current certificate in force and is logged once per change; when the
  second file of a rotation lands, the pair loads.
- ``workload_api``: swim-as's own X.509-SVID from the SPIFFE Workload API
  (the default SVID, or the one named by ``tls.spiffe_id``). The standard
  ``ssl`` module loads certificates and keys only from files, so each SVID
  is written to a private folder (mode 0700, files 0600) made for this
  process and removed when it stops; the files of the SVID in use stay
  until the next one replaces them.

Either way the new certificate goes to :meth:`TlsContextManager.update`:
new handshakes use it at once, open connections keep theirs. Each worker
process has its own TLS manager and follows the source on its own.

The same manager also takes the client authorities of the trust bundles
(:meth:`ServingCertificate.push_authorities`); building a context reads the
certificate files again, so a trust change that meets a half-rotated pair
is retried with the next good pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from swim_as.trust.workload import WorkloadApiWatcher

log = logging.getLogger("swim_as.tls")

POLL_SECONDS = 1.0

Source = Literal["files", "workload_api"]


class ServingCertificateError(Exception):
    """The serving certificate cannot be obtained at start-up."""


class ServingTls(Protocol):
    """What :class:`swim_as.tls.TlsContextManager` offers for rotation."""

    def update(
        self,
        *,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        client_authorities: Sequence[x509.Certificate] | None = None,
    ) -> None: ...


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ServingCertificate:
    """Owns swim-as's serving certificate files and keeps the TLS fresh."""

    def __init__(
        self,
        source: Source,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        watcher: WorkloadApiWatcher | None = None,
        spiffe_id: str | None = None,
        timeout: float = 10.0,
        fetch: Callable[[str, float], Any] | None = None,
    ) -> None:
        if source == "files" and (cert_file is None or key_file is None):
            raise ValueError("tls.cert_file and tls.key_file are required")
        if source == "workload_api" and watcher is None:
            raise ValueError("tls.source = workload_api needs a Workload API socket")
        self.source = source
        self.cert_file = cert_file
        self.key_file = key_file
        self.watcher = watcher
        self.spiffe_id = spiffe_id
        self.timeout = timeout
        self._fetch = fetch or _fetch_x509_context
        self._tls: ServingTls | None = None
        self._authorities: Callable[[], list[x509.Certificate]] = list
        self._folder: Path | None = None
        self._current: tuple[Path, Path] | None = None
        self._current_leaf: bytes | None = None
        self._seen: tuple[object, object] | None = None
        self._bad: tuple[object, object] | None = None
        self._pending = False
        if watcher is not None and source == "workload_api":
            watcher.on_x509(self._on_x509)

    # -- start-up ---------------------------------------------------------------

    def initial_files(self) -> tuple[Path, Path]:
        """The certificate and key files the listener starts with.

        For the Workload API this fetches swim-as's X.509-SVID once
        (blocking, at most ``timeout`` seconds) and writes it down.

        Raises:
            ServingCertificateError: no SVID could be fetched.
        """
        if self.source == "files":
            assert self.cert_file is not None and self.key_file is not None
            return self.cert_file, self.key_file
        assert self.watcher is not None
        try:
            context = self._fetch(self.watcher.socket, self.timeout)
            svid = self._choose(context)
        except ServingCertificateError:
            raise
        except Exception as err:
            raise ServingCertificateError(
                f"cannot get swim-as's X.509-SVID from the Workload API at "
                f"{self.watcher.socket}: {err}"
            ) from err
        paths = self._write(svid)
        self._current = paths
        self._current_leaf = _leaf_der(svid)
        return paths

    def attach(
        self, tls: ServingTls, authorities: Callable[[], list[x509.Certificate]]
    ) -> None:
        """Follow changes into ``tls``; ``authorities`` gives the client CAs."""
        self._tls = tls
        self._authorities = authorities
        if self.source == "files":
            self._seen = self._file_signature()

    # -- trust changes ------------------------------------------------------

    def push_authorities(self) -> None:
        """Hand the current client authorities to new handshakes."""
        if self._tls is None:
            return
        try:
            self._tls.update(client_authorities=self._authorities())
            self._pending = False
        except (OSError, ValueError) as err:
            # Building a context re-reads the certificate files; a pair in
            # the middle of a rotation is retried when the files change.
            self._pending = True
            log.error(
                "client authorities not applied yet, the certificate files "
                "do not load: %s",
                err,
                extra={"event": "tls.update_failed", "reason": str(err)},
            )

    # -- following ------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Background task: poll the files (the Workload API pushes)."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=POLL_SECONDS)
                if stop.is_set() or self._tls is None:
                    continue
                if self.source == "files":
                    self.poll_files()
                elif self._pending:
                    self.push_authorities()
        finally:
            self.close()

    def poll_files(self) -> bool:
        """Reload the certificate files if they changed; True if replaced."""
        if self._tls is None:
            return False
        signature = self._file_signature()
        if signature == self._seen and not self._pending:
            return False
        if signature == self._bad:
            return False
        try:
            self._tls.update(
                cert_file=self.cert_file,
                key_file=self.key_file,
                client_authorities=self._authorities(),
            )
        except (OSError, ValueError) as err:
            self._bad = signature
            log.error(
                "serving certificate not replaced, the current one stays: %s",
                err,
                extra={
                    "event": "tls.certificate_refused",
                    "cert_file": str(self.cert_file),
                    "reason": str(err),
                },
            )
            return False
        replaced = signature != self._seen
        self._seen, self._bad, self._pending = signature, None, False
        if replaced:
            self._log_replaced(self.cert_file)
        return replaced

    def _file_signature(self) -> tuple[object, object]:
        assert self.cert_file is not None and self.key_file is not None
        return (_signature(self.cert_file), _signature(self.key_file))

    def _on_x509(self, context: Any) -> None:
        if self._tls is None:
            return
        try:
            svid = self._choose(context)
        except ServingCertificateError as err:
            log.error(
                "serving certificate not replaced: %s",
                err,
                extra={"event": "tls.certificate_refused", "reason": str(err)},
            )
            return
        leaf = _leaf_der(svid)
        if leaf == self._current_leaf and not self._pending:
            return
        cert_path, key_path = self._write(svid)
        try:
            self._tls.update(
                cert_file=cert_path,
                key_file=key_path,
                client_authorities=self._authorities(),
            )
        except (OSError, ValueError) as err:
            if (cert_path, key_path) != self._current:
                _remove(cert_path, key_path)
            log.error(
                "serving certificate from the Workload API not used: %s",
                err,
                extra={"event": "tls.certificate_refused", "reason": str(err)},
            )
            return
        previous, self._current = self._current, (cert_path, key_path)
        self._current_leaf, self._pending = leaf, False
        if previous is not None and previous != self._current:
            _remove(*previous)
        self._log_replaced(cert_path)

    def _choose(self, context: Any) -> Any:
        svids = list(context.x509_svids)
        if self.spiffe_id is None:
            if not svids:
                raise ServingCertificateError("the Workload API sent no X.509-SVID")
            return context.default_svid
        for svid in svids:
            if str(svid.spiffe_id) == self.spiffe_id:
                return svid
        raise ServingCertificateError(
            f"the Workload API sent no X.509-SVID for {self.spiffe_id}"
        )

    def _write(self, svid: Any) -> tuple[Path, Path]:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="swim-as-svid-"))
        stem = hashlib.sha256(_leaf_der(svid)).hexdigest()[:16]
        pem = serialization.Encoding.PEM
        chain = b"".join(c.public_bytes(pem) for c in svid.cert_chain)
        key = svid.private_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        cert_path = self._folder / f"{stem}.pem"
        key_path = self._folder / f"{stem}.key.pem"
        _write_private(cert_path, chain)
        _write_private(key_path, key)
        return cert_path, key_path

    def _log_replaced(self, cert_path: Path | None) -> None:
        leaf = _first_certificate(cert_path) if cert_path else None
        log.info(
            "serving certificate replaced; new connections use it",
            extra={
                "event": "tls.certificate_replaced",
                "source": self.source,
                "sha256": hashlib.sha256(
                    leaf.public_bytes(serialization.Encoding.DER)
                ).hexdigest()
                if leaf
                else None,
                "not_after": leaf.not_valid_after_utc.isoformat() if leaf else None,
            },
        )

    def close(self) -> None:
        """Remove the private folder of Workload API certificates."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _fetch_x509_context(socket: str, timeout: float) -> Any:
    from spiffe.workloadapi.workload_api_client import WorkloadApiClient

    with WorkloadApiClient(socket, default_timeout=timeout) as client:
        return client.fetch_x509_context()


def _leaf_der(svid: Any) -> bytes:
    leaf: x509.Certificate = svid.leaf
    return leaf.public_bytes(serialization.Encoding.DER)


def _write_private(path: Path, data: bytes) -> None:
    staged = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(staged, path)


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _first_certificate(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
