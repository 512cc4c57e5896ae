"""Parsers for the headers a TLS-terminating proxy uses to pass on the
client's certificate (D5; STANDARDS.md §12).

Three formats, all pure functions over the header text, no I/O:

* Envoy/Istio ``x-forwarded-client-cert`` (XFCC): elements separated by
  commas, one per proxy that handled the request, each appended at the end;
  an element is ``Key=Value`` pairs separated by semicolons. Keys are
  case-insensitive, values case-sensitive. A value holding ``,`` ``;`` or
  ``=`` is double-quoted, and a ``"`` inside quotes is written ``\\"``.
  Keys: ``By`` (the proxy's own URI SAN, may repeat), ``Hash`` (hex SHA-256
  of the client certificate's DER), ``Cert`` (URL-encoded PEM leaf),
  ``Chain`` (URL-encoded PEM chain, leaf first), ``Subject``, ``URI`` and
  ``DNS`` (the client's SANs, may repeat).
* RFC 9440 ``Client-Cert`` (one structured-field byte sequence, RFC 8941
  §3.3.5, holding the DER leaf) and ``Client-Cert-Chain`` (a list of byte
  sequences: the rest of the chain, leaf excluded).
* nginx ``$ssl_client_escaped_cert``: the leaf as URL-encoded PEM.

Everything is bounded (:class:`HeaderLimits`) and strict: text that does
not follow the format, a certificate count other than the expected one, and
parts of one XFCC element that disagree with each other raise
:class:`ForwardedHeaderError`, whose message says what was wrong without
repeating the header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from cryptography import x509

__all__ = [
    "DEFAULT_LIMITS",
    "ForwardedHeaderError",
    "HeaderLimits",
    "XfccElement",
    "check_agreement",
    "header_text",
    "parse_client_cert",
    "parse_client_cert_chain",
    "parse_escaped_pem",
    "parse_xfcc",
    "xfcc_chain",
]


class ForwardedHeaderError(ValueError):
    """A forwarded-certificate header is malformed, too large, or
    contradicts itself."""


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    """Bounds on what a proxy may send.

    ``max_bytes`` caps each header (all its lines together),
    ``max_elements`` the XFCC elements, and ``max_chain`` the certificates
    of one chain, leaf included.
    """

    max_bytes: int = 32 * 1024
    max_elements: int = 16
    max_chain: int = 8


DEFAULT_LIMITS = HeaderLimits()


def header_text(values: Sequence[bytes], name: str, limits: HeaderLimits) -> str:
    """Join the lines of one header (RFC 9110 §5.3: a comma-separated list
    may be split over several lines) and decode it as ASCII.

    Raises:
        ForwardedHeaderError: too large, or not ASCII.
    """
    raw = values[0] if len(values) == 1 else b",".join(values)
    if len(raw) > limits.max_bytes:
        raise ForwardedHeaderError(
            f"{name}: {len(raw)} bytes, over the limit of {limits.max_bytes}"
        )
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ForwardedHeaderError(f"{name}: not ASCII text") from None


# -- Envoy x-forwarded-client-cert -------------------------------------------


@dataclass(frozen=True, slots=True)
class XfccElement:
    """One XFCC element, as the proxy wrote it.

    ``cert`` and ``chain`` are still URL-encoded (decode them with
    :func:`xfcc_chain`); ``hash`` is lower-case hex. Empty ``Subject``,
    ``URI`` and ``DNS`` values, which Envoy writes for a certificate without
    them, are left out.
    """

    by: tuple[str, ...] = ()
    hash: str | None = None
    cert: str | None = None
    chain: str | None = None
    subject: str | None = None
    uri: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()

    @property
    def has_certificate(self) -> bool:
        return self.cert is not None or self.chain is not None


_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Inside quotes: any visible character or space, a backslash escaping one.
_QUOTED = re.compile(r'"((?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*)"')
_UNQUOTED = re.compile(r'[^,;="\\\s\x00-\x1f\x7f]*')
_ESCAPE = re.compile(r'\\(["\\])')
_OWS = " \t"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_SINGLE_KEYS = ("hash", "cert", "chain", "subject")


def parse_xfcc(value: str, limits: HeaderLimits = DEFAULT_LIMITS) -> list[XfccElement]:
    """Split an XFCC header into its elements, first to last.

    Quote-aware: separators inside a double-quoted value are data, and
    ``\\"`` and ``\\\\`` inside quotes stand for ``"`` and ``\\``. Spaces
    and tabs around separators are allowed. Unknown keys are skipped (they
    carry nothing swim-as uses); ``Hash``, ``Cert``, ``Chain`` and
    ``Subject`` may appear at most once per element.

    Raises:
        ForwardedHeaderError: the text does not follow the format, an
            element is empty, a value is malformed, or there are more than
            ``limits.max_elements`` elements.
    """
    if len(value) > limits.max_bytes:
        raise ForwardedHeaderError(
            f"XFCC: {len(value)} bytes, over the limit of {limits.max_bytes}"
        )
    elements: list[XfccElement] = []
    pairs: list[tuple[str, str]] = []
    end = len(value)
    i = 0
    while True:
        while i < end and value[i] in _OWS:
            i += 1
        key_match = _KEY.match(value, i)
        if key_match is None:
            raise ForwardedHeaderError(
                f"XFCC: expected a key at offset {i}"
                + (" (empty element or trailing separator)" if i >= end else "")
            )
        key = key_match.group().lower()
        i = key_match.end()
        if i >= end or value[i] != "=":
            raise ForwardedHeaderError(f"XFCC: expected '=' after key {key!r}")
        i += 1
        if i < end and value[i] == '"':
            quoted = _QUOTED.match(value, i)
            if quoted is None:
                raise ForwardedHeaderError(
                    f"XFCC: unterminated or invalid quoted value for {key!r}"
                )
            text = _ESCAPE.sub(r"\1", quoted.group(1))
            i = quoted.end()
        else:
            bare = _UNQUOTED.match(value, i)
            assert bare is not None  # the pattern matches the empty string
            text = bare.group()
            i = bare.end()
            if i < end and value[i] in '="\\':
                raise ForwardedHeaderError(
                    f"XFCC: value of {key!r} holds {value[i]!r} and is not quoted"
                )
        pairs.append((key, text))

        while i < end and value[i] in _OWS:
            i += 1
        if i >= end:
            elements.append(_element(pairs))
            return elements
        separator = value[i]
        i += 1
        if separator == ",":
            elements.append(_element(pairs))
            pairs = []
            if len(elements) >= limits.max_elements:
                raise ForwardedHeaderError(
                    f"XFCC: more than {limits.max_elements} elements"
                )
        elif separator != ";":
            raise ForwardedHeaderError(
                f"XFCC: unexpected {separator!r} after the value of {key!r}"
            )


def _element(pairs: list[tuple[str, str]]) -> XfccElement:
    single: dict[str, str] = {}
    by: list[str] = []
    uri: list[str] = []
    dns: list[str] = []
    for key, text in pairs:
        if key in _SINGLE_KEYS:
            if key in single:
                raise ForwardedHeaderError(f"XFCC: {key!r} twice in one element")
            single[key] = text
        elif key == "by":
            if not text:
                raise ForwardedHeaderError("XFCC: empty 'by'")
            by.append(text)
        elif key == "uri":
            if text:
                uri.append(text)
        elif key == "dns":
            if text:
                dns.append(text)
    digest = single.get("hash")
    if digest is not None:
        if not _HEX64.fullmatch(digest):
            raise ForwardedHeaderError("XFCC: 'hash' is not a hex SHA-256 digest")
        digest = digest.lower()
    for key in ("cert", "chain"):
        if single.get(key) == "":
            raise ForwardedHeaderError(f"XFCC: empty {key!r}")
    return XfccElement(
        by=tuple(by),
        hash=digest,
        cert=single.get("cert"),
        chain=single.get("chain"),
        subject=single.get("subject") or None,
        uri=tuple(uri),
        dns=tuple(dns),
    )


def xfcc_chain(
    element: XfccElement, limits: HeaderLimits = DEFAULT_LIMITS
) -> tuple[bytes, ...]:
    """The DER certificates an element forwards, leaf first; empty if none.

    ``Cert`` must hold exactly one certificate and ``Chain`` one to
    ``limits.max_chain``; when both are present, the first of ``Chain``
    must be ``Cert``.

    Raises:
        ForwardedHeaderError: bad URL encoding or PEM, a wrong certificate
            count, or ``Cert`` and ``Chain`` naming different leaves.
    """
    leaf: bytes | None = None
    if element.cert is not None:
        (leaf,) = _pem_certificates(
            _url_decoded(element.cert, "XFCC Cert"), "XFCC Cert", exactly=1
        )
    if element.chain is None:
        return () if leaf is None else (leaf,)
    chain = _pem_certificates(
        _url_decoded(element.chain, "XFCC Chain"),
        "XFCC Chain",
        at_most=limits.max_chain,
    )
    if leaf is not None and chain[0] != leaf:
        raise ForwardedHeaderError("XFCC: 'Chain' does not start with 'Cert'")
    return chain


def check_agreement(
    element: XfccElement, leaf_der: bytes, leaf: x509.Certificate
) -> None:
    """Refuse an element whose ``Hash``, ``URI`` or ``DNS`` disagree with
    the certificate it forwards.

    ``Hash`` must be the SHA-256 of the leaf's DER; every ``URI`` and
    ``DNS`` value must be a SAN of that type in the leaf (Envoy writes one
    pair per SAN; older versions only the first). ``Subject`` is not
    compared: its text form depends on the proxy's formatting, and the leaf
    itself is what gets verified.

    Raises:
        ForwardedHeaderError: a value disagrees with the leaf.
    """
    if element.hash is not None:
        if hashlib.sha256(leaf_der).hexdigest() != element.hash:
            raise ForwardedHeaderError(
                "XFCC: 'Hash' is not the SHA-256 of the forwarded certificate"
            )
    if not element.uri and not element.dns:
        return
    try:
        sans = leaf.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    except (ValueError, x509.DuplicateExtension) as err:
        raise ForwardedHeaderError(
            f"XFCC: the certificate's SANs do not parse: {err}"
        ) from err
    uris = set(sans.get_values_for_type(x509.UniformResourceIdentifier))
    for uri in element.uri:
        if uri not in uris:
            raise ForwardedHeaderError(
                f"XFCC: 'URI' {uri[:200]!r} is not a URI SAN of the certificate"
            )
    names = set(sans.get_values_for_type(x509.DNSName))
    for name in element.dns:
        if name not in names:
            raise ForwardedHeaderError(
                f"XFCC: 'DNS' {name[:200]!r} is not a DNS SAN of the certificate"
            )


# -- RFC 9440 Client-Cert / Client-Cert-Chain --------------------------------

# RFC 8941 §3.3.5: ":" base64 ":"; nothing else (no parameters) is accepted.
_BYTE_SEQUENCE = re.compile(r":([A-Za-z0-9+/]*={0,2}):")


def parse_client_cert(value: str) -> bytes:
    """The DER leaf from an RFC 9440 ``Client-Cert`` value.

    Raises:
        ForwardedHeaderError: not exactly one byte sequence, or not base64.
    """
    return _byte_sequence(value.strip(_OWS), "Client-Cert")


def parse_client_cert_chain(
    value: str, limits: HeaderLimits = DEFAULT_LIMITS
) -> tuple[bytes, ...]:
    """The DER certificates of an RFC 9440 ``Client-Cert-Chain`` list (the
    chain without the leaf), in the order sent.

    Raises:
        ForwardedHeaderError: a member that is not a byte sequence, an empty
            member, or more than ``limits.max_chain - 1`` members.
    """
    members = value.split(",")
    if len(members) > limits.max_chain - 1:
        raise ForwardedHeaderError(
            f"Client-Cert-Chain: more than {limits.max_chain - 1} certificates"
        )
    return tuple(
        _byte_sequence(member.strip(_OWS), "Client-Cert-Chain") for member in members
    )


def _byte_sequence(text: str, name: str) -> bytes:
    match = _BYTE_SEQUENCE.fullmatch(text)
    if match is None:
        raise ForwardedHeaderError(f"{name}: not a structured-field byte sequence")
    body = match.group(1)
    # RFC 8941 §4.2.7: tolerate missing padding.
    body += "=" * (-len(body) % 4)
    try:
        der = base64.b64decode(body, validate=True)
    except binascii.Error as err:
        raise ForwardedHeaderError(f"{name}: bad base64: {err}") from err
    if not der:
        raise ForwardedHeaderError(f"{name}: empty byte sequence")
    return der


# -- nginx $ssl_client_escaped_cert ------------------------------------------


def parse_escaped_pem(value: str, name: str) -> bytes:
    """The DER leaf from nginx's ``$ssl_client_escaped_cert`` (URL-encoded
    PEM of exactly one certificate), sent in the header ``name``.

    Raises:
        ForwardedHeaderError: bad URL encoding or PEM, or not exactly one
            certificate.
    """
    (leaf,) = _pem_certificates(_url_decoded(value, name), name, exactly=1)
    return leaf


# -- shared ------------------------------------------------------------------

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PEM_BLOCK = re.compile(
    r"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*)-----END CERTIFICATE-----"
)


def _url_decoded(text: str, name: str) -> str:
    if "%" not in text:
        return text
    if _BAD_PERCENT.search(text):
        raise ForwardedHeaderError(f"{name}: bad percent-encoding")
    try:
        return unquote(text, encoding="ascii", errors="strict")
    except UnicodeDecodeError:
        raise ForwardedHeaderError(f"{name}: not ASCII once decoded") from None


def _pem_certificates(
    text: str, name: str, *, exactly: int | None = None, at_most: int | None = None
) -> tuple[bytes, ...]:
    """PEM CERTIFICATE blocks and nothing else but whitespace between them."""
    found: list[bytes] = []
    position = 0
    for block in _PEM_BLOCK.finditer(text):
        if text[position : block.start()].strip():
            raise ForwardedHeaderError(f"{name}: text outside certificate blocks")
        position = block.end()
        try:
            der = base64.b64decode("".join(block.group(1).split()), validate=True)
        except binascii.Error as err:
            raise ForwardedHeaderError(f"{name}: bad base64 in PEM: {err}") from err
        if not der:
            raise ForwardedHeaderError(f"{name}: empty certificate block")
        found.append(der)
        if at_most is not None and len(found) > at_most:
            raise ForwardedHeaderError(f"{name}: more than {at_most} certificates")
        if exactly is not None and len(found) > exactly:
            raise ForwardedHeaderError(
                f"{name}: more than {exactly} certificate(s) where "
                f"{exactly} is expected"
            )
    if text[position:].strip():
        raise ForwardedHeaderError(f"{name}: text outside certificate blocks")
    if not found:
        raise ForwardedHeaderError(f"{name}: no PEM certificate")
    if exactly is not None and len(found) != exactly:
        raise ForwardedHeaderError(f"{name}: expected {exactly} certificate(s)")
    return tuple(found)
