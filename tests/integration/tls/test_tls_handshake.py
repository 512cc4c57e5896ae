"""The listener's handshake and the ASGI TLS extension, over real sockets.

asgiref specs/tls.rst (TLS extension 0.2); RFC 8705 §2 (client certificates
asked for, not required); SPIFFE X509-SVID §5 (the chain reaches the
application, which verifies it itself).
"""

from __future__ import annotations

import socket
import ssl
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import pytest

from swim_as.tls import CLIENT_VERIFY_FLAGS, build_server_context, client_chain_der

HTTP_IMPLEMENTATIONS = pytest.mark.parametrize("http", ["httptools", "h11"])

TLS13_SUITES = {0x1301, 0x1302, 0x1303}

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) seen by the server's verification.
UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
SELF_SIGNED_CERT = 18


# Through the runner: what the application sees.


@HTTP_IMPLEMENTATIONS
async def test_without_client_certificate_the_chain_is_empty(app, serve, client, http):
    async with serve(app, http=http) as served:
        response = await client.get_once(served.port, client.context())

    assert response.status == 200
    assert response.json() == {
        "scheme": "https",
        "tls": {
            "server_cert": None,
            "client_cert_chain": [],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": 0x0304,
            "cipher_suite": response.json()["tls"]["cipher_suite"],
        },
    }
    assert response.json()["tls"]["cipher_suite"] in TLS13_SUITES


@HTTP_IMPLEMENTATIONS
async def test_leaf_and_intermediate_reach_the_app_in_order(
    app, serve, client, pki, http
):
    async with serve(app, http=http) as served:
        response = await client.get_once(served.port, client.context(pki.leaf_a))

    chain = response.json()["tls"]["client_cert_chain"]
    assert chain == [pki.leaf_a.pem, pki.intermediate_a.pem]


async def test_tls12_reports_version_and_suite_numbers(app, serve, client, pki):
    context = client.context(pki.direct_a, max_version=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    async with serve(app) as served:
        response = await client.get_once(served.port, context)

    tls = response.json()["tls"]
    assert tls["tls_version"] == 0x0303
    # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, RFC 5289 §3.
    assert tls["cipher_suite"] == 0xC02B
    assert tls["client_cert_chain"] == [pki.direct_a.pem]


def _tls11_client(client: Any, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    context: ssl.SSLContext = client.context()
    with warnings.catch_warnings():
        # Setting a TLS 1.1 bound is deprecated; this client needs it anyway.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = maximum
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


async def test_tls11_is_refused(app, serve, client):
    only_tls11 = _tls11_client(client, ssl.TLSVersion.TLSv1_1)
    up_to_tls12 = _tls11_client(client, ssl.TLSVersion.TLSv1_2)

    async with serve(app) as served:
        await client.refused(served.port, only_tls11)
        assert app.scopes == []
        response = await client.get_once(served.port, up_to_tls12)

    assert response.json()["tls"]["tls_version"] == 0x0303


@pytest.mark.parametrize("name", ["expired_a", "future_a"], ids=["expired", "future"])
async def test_out_of_date_certificate_reaches_the_app(app, serve, client, pki, name):
    certificate = getattr(pki, name)
    async with serve(app) as served:
        response = await client.get_once(served.port, client.context(certificate))

    assert response.json()["tls"]["client_cert_chain"] == [certificate.pem]


@pytest.mark.parametrize(
    "name", ["unknown_leaf", "self_signed", "leaf_b"], ids=["unknown-ca", "self", "b"]
)
async def test_certificate_from_unloaded_authority_is_refused(
    app, serve, client, pki, name
):
    async with serve(app) as served:
        await client.refused(served.port, client.context(getattr(pki, name)))
        # The listener still serves everyone else.
        response = await client.get_once(served.port, client.context(pki.leaf_a))

    assert [
        scope["extensions"]["tls"]["client_cert_chain"][0] for scope in app.scopes
    ] == [pki.leaf_a.pem]
    assert response.status == 200


async def test_registered_self_signed_certificate_is_an_anchor(app, serve, client, pki):
    authorities = [pki.root_a.cert, pki.self_signed.cert]
    async with serve(app, authorities) as served:
        response = await client.get_once(served.port, client.context(pki.self_signed))

    assert response.json()["tls"]["client_cert_chain"] == [pki.self_signed.pem]


async def test_intermediate_alone_is_an_anchor(app, serve, client, pki):
    # VERIFY_X509_PARTIAL_CHAIN: a bundle may hold an intermediate CA only.
    async with serve(app, [pki.intermediate_a.cert]) as served:
        response = await client.get_once(
            served.port, client.context(pki.leaf_a, send_chain=False)
        )

    assert response.json()["tls"]["client_cert_chain"] == [pki.leaf_a.pem]


async def test_without_authorities_only_clients_without_certificate_connect(
    app, serve, client, pki
):
    async with serve(app, []) as served:
        response = await client.get_once(served.port, client.context())
        await client.refused(served.port, client.context(pki.leaf_a))

    assert response.json()["tls"]["client_cert_chain"] == []
    assert len(app.scopes) == 1


@HTTP_IMPLEMENTATIONS
async def test_one_extension_dict_per_connection(app, serve, client, pki, http):
    async with serve(app, http=http) as served:
        connection = await client.open(served.port, client.context(pki.leaf_a))
        try:
            first = await connection.get()
            second = await connection.get()
        finally:
            await connection.close()
        await client.get_once(served.port, client.context(pki.leaf_a))

    assert first.status == second.status == 200
    one, two, other = (scope["extensions"]["tls"] for scope in app.scopes)
    assert one is two
    assert other is not one
    assert app.scopes[0]["extensions"] is not app.scopes[1]["extensions"]


@HTTP_IMPLEMENTATIONS
async def test_plain_http_has_no_tls_extension(app, serve, client, http):
    async with serve(app, tls=False, http=http) as served:
        response = await client.get_once(served.port, None)

    assert response.json() == {"tls": None, "scheme": "http"}
    assert "extensions" not in app.scopes[0]


# The context on its own: why a handshake fails, seen from the server.


@dataclass(frozen=True)
class Handshake:
    server_error: BaseException | None
    chain: tuple[bytes, ...]
    resumed: bool


def _handshakes(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, count: int = 1
) -> list[Handshake]:
    """Handshake ``count`` times over blocking sockets on 127.0.0.1, offering
    the previous session each time; report what the server saw."""
    seen: list[Handshake] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            for _ in range(count):
                raw, _ = listener.accept()
                with raw:
                    try:
                        tls = server_context.wrap_socket(raw, server_side=True)
                    except ssl.SSLError as err:
                        seen.append(Handshake(err, (), False))
                        continue
                    with tls:
                        chain = client_chain_der(tls)
                        seen.append(Handshake(None, chain, bool(tls.session_reused)))
                        tls.sendall(b"x")
                        tls.recv(1)

        thread = threading.Thread(target=accept)
        thread.start()
        session: ssl.SSLSession | None = None
        try:
            for _ in range(count):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                    try:
                        with client_context.wrap_socket(
                            raw, server_hostname="127.0.0.1", session=session
                        ) as tls:
                            tls.recv(1)  # TLS 1.3 tickets come after the handshake
                            session = tls.session
                            tls.sendall(b"y")
                    except (ssl.SSLError, ConnectionError):
                        pass
        finally:
            thread.join(10)
    return seen


def test_context_settings(pki):
    context = build_server_context(
        pki.server.cert_file, pki.server.key_file, [pki.root_a.cert]
    )

    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.verify_flags == CLIENT_VERIFY_FLAGS
    assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert context.verify_flags & 0x200000  # X509_V_FLAG_NO_CHECK_TIME
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_TICKET
    assert context.num_tickets == 0
    assert context.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize(
    ("name", "verify_code"),
    [
        ("unknown_leaf", UNABLE_TO_GET_ISSUER_CERT_LOCALLY),
        ("leaf_b", UNABLE_TO_GET_ISSUER_CERT_LOCALLY),
        ("self_signed", SELF_SIGNED_CERT),
    ],
    ids=["unknown-ca", "other-domain", "self-signed"],
)
def test_handshake_refuses_certificates_outside_the_store(
    pki, client, name, verify_code
):
    context = build_server_context(
        pki.server.cert_file, pki.server.key_file, [pki.root_a.cert]
    )
    (seen,) = _handshakes(context, client.context(getattr(pki, name)))

    assert isinstance(seen.server_error, ssl.SSLCertVerificationError)
    assert seen.server_error.verify_code == verify_code


@pytest.mark.parametrize("name", ["expired_a", "future_a"], ids=["expired", "future"])
def test_handshake_ignores_validity_dates(pki, client, name):
    context = build_server_context(
        pki.server.cert_file, pki.server.key_file, [pki.root_a.cert]
    )
    (seen,) = _handshakes(context, client.context(getattr(pki, name)))

    assert seen.server_error is None
    assert seen.chain[0] == getattr(pki, name).der


def test_without_no_check_time_the_expired_certificate_would_fail(pki, client):
    # Control for the test above: the flag is what lets it through.
    context = build_server_context(
        pki.server.cert_file, pki.server.key_file, [pki.root_a.cert]
    )
    context.verify_flags = ssl.VERIFY_X509_TRUSTED_FIRST
    (seen,) = _handshakes(context, client.context(pki.expired_a))

    assert isinstance(seen.server_error, ssl.SSLCertVerificationError)
    assert "expired" in seen.server_error.verify_message


def test_empty_authorities_accept_no_certificate_and_refuse_any(pki, client):
    context = build_server_context(pki.server.cert_file, pki.server.key_file, [])
    (without,) = _handshakes(context, client.context())
    (with_leaf,) = _handshakes(context, client.context(pki.leaf_a))

    assert without == Handshake(None, (), False)
    assert isinstance(with_leaf.server_error, ssl.SSLCertVerificationError)


@pytest.mark.parametrize(
    "version",
    [ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.MINIMUM_SUPPORTED],
    ids=["tls1.1", "minimum-supported"],
)
def test_minimum_below_tls12_is_refused(pki, version):
    with pytest.raises(ValueError, match="must be 1.2 or 1.3"):
        build_server_context(
            pki.server.cert_file, pki.server.key_file, [], min_version=version
        )


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["1.2", "1.3"]
)
def test_sessions_are_never_resumed_so_the_chain_is_complete(pki, client, version):
    context = build_server_context(
        pki.server.cert_file, pki.server.key_file, [pki.root_a.cert]
    )
    seen = _handshakes(
        context, client.context(pki.leaf_a, max_version=version), count=2
    )

    chain = (pki.leaf_a.der, pki.intermediate_a.der)
    assert seen == [Handshake(None, chain, False), Handshake(None, chain, False)]


def test_resumed_session_keeps_only_the_leaf(pki, client):
    # Why resumption is off: with tickets allowed (not on our contexts), a
    # resumed session has lost the intermediates and client_chain_der falls
    # back to the leaf.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert_file, pki.server.key_file)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=pki.root_a.der)
    seen = _handshakes(context, client.context(pki.leaf_a), count=2)

    assert seen == [
        Handshake(None, (pki.leaf_a.der, pki.intermediate_a.der), False),
        Handshake(None, (pki.leaf_a.der,), True),
    ]
