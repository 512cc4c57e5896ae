"""Bundles read from files, reloaded when the files change (D3).

spiffe-helper and Kubernetes volume updates replace a file atomically (a
rename), so a change shows as a new inode, size or modification time. A file
that fails to parse leaves the last good bundle in force and says why.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from swim_as.spiffe.bundle import JwtBundle, X509Bundle, parse_bundle, parse_jwt_bundle
from swim_as.spiffe.errors import BundleError
from swim_as.spiffe.ids import TrustDomain
from swim_as.trust.store import TrustStore

log = logging.getLogger("swim_as.trust")


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class FileBundleSource:
    """The bundle files of one trust domain."""

    trust_domain: TrustDomain
    bundle_file: Path | None
    jwt_bundle_file: Path | None
    _seen: tuple[object, object] = (None, None)

    def read(self) -> tuple[X509Bundle | None, JwtBundle | None]:
        """Parse both files.

        Raises:
            BundleError: a file is missing or does not hold a valid bundle.
        """
        x509_bundle: X509Bundle | None = None
        jwt_bundle: JwtBundle | None = None
        if self.bundle_file is not None:
            x509_bundle, embedded_jwt = parse_bundle(
                _read(self.bundle_file), self.trust_domain
            )
            if embedded_jwt.keys:
                jwt_bundle = embedded_jwt
            _log_skipped(self.trust_domain, self.bundle_file, x509_bundle.skipped)
        if self.jwt_bundle_file is not None:
            jwt_bundle = parse_jwt_bundle(
                _read(self.jwt_bundle_file), self.trust_domain
            )
            _log_skipped(self.trust_domain, self.jwt_bundle_file, jwt_bundle.skipped)
        return x509_bundle, jwt_bundle

    def changed(self) -> bool:
        """Whether either file changed since the last successful read."""
        return self._current() != self._seen

    def _current(self) -> tuple[object, object]:
        return (
            _signature(self.bundle_file) if self.bundle_file else None,
            _signature(self.jwt_bundle_file) if self.jwt_bundle_file else None,
        )

    def load_into(self, store: TrustStore, *, initial: bool = False) -> bool:
        """Read the files into the store; True when a new bundle went in.

        At start-up (``initial``) a bad file is fatal: swim-as refuses to
        start on a configuration it cannot honour. Later, the last good
        bundle stays in force.
        """
        seen = self._current()
        try:
            x509_bundle, jwt_bundle = self.read()
        except BundleError as err:
            if initial:
                raise
            self._seen = seen  # do not re-read the same bad file every tick
            state = store.state(self.trust_domain)
            if state is not None:
                state.error = str(err)
            log.error(
                "bundle file refused; the last good bundle stays in force",
                extra={
                    "event": "bundle.refused",
                    "trust_domain": str(self.trust_domain),
                    "reason": str(err),
                },
            )
            return False
        self._seen = seen
        store.set_bundles(
            self.trust_domain, x509_bundle=x509_bundle, jwt_bundle=jwt_bundle
        )
        log.info(
            "bundle loaded",
            extra={
                "event": "bundle.refreshed",
                "trust_domain": str(self.trust_domain),
                "x509_authorities": len(x509_bundle.authorities) if x509_bundle else 0,
                "jwt_keys": sorted(jwt_bundle.keys) if jwt_bundle else [],
            },
        )
        return True


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise BundleError(f"cannot read bundle file {path}: {err.strerror}") from err


def _log_skipped(td: TrustDomain, path: Path, skipped: tuple[str, ...]) -> None:
    for reason in skipped:
        log.warning(
            "bundle entry skipped",
            extra={
                "event": "bundle.entry_skipped",
                "trust_domain": str(td),
                "file": str(path),
                "reason": reason,
            },
        )
