"""Bundles read from files, reloaded when the files change (D3).

spiffe-helper and Kubernetes volume updates replace a file atomically (a
rename), so a change shows as a new inode, size or modification time; the
files are polled for that. A file that is missing or fails to parse leaves
the last good bundle in force, and so does a SPIFFE bundle whose
``spiffe_sequence`` is lower than the one in force (both through
:class:`BundleUpdates`, which logs and audits them). While a file stays
unchanged and readable, each poll confirms its bundle is fresh; while it is
bad, the bundle's age grows towards the trust domain's maximum age.

A bundle file is PEM CA certificates, a SPIFFE bundle (JWK Set) or a SPIFFE
bundle map; see :mod:`swim_as.spiffe.bundle`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from swim_as.spiffe.bundle import JwtBundle, X509Bundle, parse_bundle, parse_jwt_bundle
from swim_as.spiffe.errors import BundleError
from swim_as.spiffe.ids import TrustDomain
from swim_as.trust.updates import BundleUpdates

log = logging.getLogger("swim_as.trust")

_Signature = tuple[int, int, int] | None


def _signature(path: Path) -> _Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read_bundle_files(
    trust_domain: TrustDomain, bundle_file: Path | None, jwt_bundle_file: Path | None
) -> tuple[X509Bundle | None, JwtBundle | None]:
    """Parse a trust domain's bundle files.

    The JWT keys come from ``jwt_bundle_file`` when it is set, else from
    the JSON ``bundle_file`` (none for a PEM file): the JWT bundle returned
    is always complete, so keys removed from a file stop being trusted.

    Raises:
        BundleError: a file is missing or does not hold a valid bundle.
    """
    x509_bundle: X509Bundle | None = None
    jwt_bundle: JwtBundle | None = None
    if bundle_file is not None:
        x509_bundle, jwt_bundle = parse_bundle(_read(bundle_file), trust_domain)
    if jwt_bundle_file is not None:
        jwt_bundle = parse_jwt_bundle(_read(jwt_bundle_file), trust_domain)
    return x509_bundle, jwt_bundle


@dataclass
class FileBundleSource:
    """The bundle files of one trust domain, polled for changes."""

    trust_domain: TrustDomain
    bundle_file: Path | None
    jwt_bundle_file: Path | None
    # Needed to load and follow; :meth:`read` alone (a pre-flight check of
    # the files) works without.
    updates: BundleUpdates | None = None
    _seen: tuple[_Signature, _Signature] | None = None
    _good: bool = False

    @property
    def origin(self) -> str:
        return ", ".join(str(p) for p in (self.bundle_file, self.jwt_bundle_file) if p)

    def read(self) -> tuple[X509Bundle | None, JwtBundle | None]:
        """Parse both files.

        Raises:
            BundleError: a file is missing or does not hold a valid bundle.
        """
        return read_bundle_files(
            self.trust_domain, self.bundle_file, self.jwt_bundle_file
        )

    def changed(self) -> bool:
        """Whether either file changed since it was last read."""
        return self._current() != self._seen

    def _current(self) -> tuple[_Signature, _Signature]:
        return (
            _signature(self.bundle_file) if self.bundle_file else None,
            _signature(self.jwt_bundle_file) if self.jwt_bundle_file else None,
        )

    def load_initial(self) -> None:
        """Read the files at start-up.

        A bad file is fatal here: swim-as refuses to start on a
        configuration it cannot honour.

        Raises:
            BundleError: a file is missing or does not hold a valid bundle.
        """
        assert self.updates is not None
        seen = self._current()
        x509_bundle, jwt_bundle = self.read()
        self._seen = seen
        self._good = True
        self.updates.apply(
            self.trust_domain, x509=x509_bundle, jwt=jwt_bundle, origin=self.origin
        )

    def poll(self) -> bool:
        """Re-read the files if they changed; True when a new bundle went in.

        Unchanged good files confirm the bundle in force; a bad file is
        refused once per change (the same bad file is not read again).
        """
        assert self.updates is not None
        if not self.changed():
            if self._good:
                self.updates.confirm(self.trust_domain)
            return False
        seen = self._current()
        try:
            x509_bundle, jwt_bundle = self.read()
        except BundleError as err:
            self._seen, self._good = seen, False
            self.updates.refuse(
                self.trust_domain, err.reason, str(err), origin=self.origin
            )
            return False
        self._seen = seen
        changed = self.updates.apply(
            self.trust_domain, x509=x509_bundle, jwt=jwt_bundle, origin=self.origin
        )
        # A refused sequence leaves the bundle in force unconfirmed.
        state = self.updates.store.state(self.trust_domain)
        self._good = state is not None and state.failures == 0
        return changed


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise BundleError(
            f"cannot read bundle file {path}: {err.strerror}", reason="unreadable"
        ) from err
