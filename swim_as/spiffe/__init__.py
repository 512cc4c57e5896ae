"""The SPIFFE layer: IDs, trust bundles and SVID verification.

Pure code with no I/O, no network and no database; it imports nothing else
from swim-as. Time is always passed in. Modules:

- :mod:`~swim_as.spiffe.ids`: ``TrustDomain``, ``SpiffeId``,
  ``SpiffeIdPattern`` (SPIFFE-ID §2, decision D4);
- :mod:`~swim_as.spiffe.bundle`: ``X509Bundle``, ``JwtBundle``,
  ``parse_bundle``, ``parse_jwt_bundle`` (SPIFFE Trust Domain and Bundle §4);
- :mod:`~swim_as.spiffe.x509svid`: ``verify_x509_svid`` (SPIFFE X509-SVID
  §5);
- :mod:`~swim_as.spiffe.jwtsvid`: ``verify_jwt_svid`` (SPIFFE JWT-SVID §2-§4);
- :mod:`~swim_as.spiffe.errors`: the ``SpiffeError`` tree.
"""

from swim_as.spiffe.bundle import (
    JwtBundle,
    JwtKey,
    X509Bundle,
    parse_bundle,
    parse_jwt_bundle,
)
from swim_as.spiffe.errors import (
    BundleError,
    JwtSvidError,
    SpiffeError,
    SpiffeIdError,
    X509SvidError,
)
from swim_as.spiffe.ids import SpiffeId, SpiffeIdPattern, TrustDomain
from swim_as.spiffe.jwtsvid import VerifiedJwtSvid, verify_jwt_svid
from swim_as.spiffe.x509svid import VerifiedX509Svid, thumbprint, verify_x509_svid

__all__ = [
    "BundleError",
    "JwtBundle",
    "JwtKey",
    "JwtSvidError",
    "SpiffeError",
    "SpiffeId",
    "SpiffeIdError",
    "SpiffeIdPattern",
    "TrustDomain",
    "VerifiedJwtSvid",
    "VerifiedX509Svid",
    "X509Bundle",
    "X509SvidError",
    "parse_bundle",
    "parse_jwt_bundle",
    "thumbprint",
    "verify_jwt_svid",
    "verify_x509_svid",
]
