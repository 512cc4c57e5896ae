"""``self_signed_tls_client_auth`` (RFC 8705 §2.2) over real mTLS.

The registered certificates reach the TLS handshake store after the
registration commits; a look-alike certificate with another key is refused
in the handshake when nobody registered it, and with ``invalid_client``
when another client did.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from swim_as.errors import InvalidClientMetadata
from tests.support.clients import operator, token_when_handshake_accepts
from tests.support.harness import Running, running_server
from tests.support.harness import TestPki as Pki
from tests.support.jose import jwk_of, x5c_of
from tests.support.jwks_server import JwksServer, server_tls
from tests.support.pki import Svid, self_signed, write_svid
from tests.support.postgres import create_database


@pytest.fixture(scope="module")
async def server(
    postgres_server: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    folder: Path = tmp_path_factory.mktemp("self-signed-server")
    async with running_server(
        pki,
        await create_database(postgres_server),
        folder,
        client_auth={
            "jwks_uri_allowed_networks": ["127.0.0.1/32"],
            "jwks_uri_ca_file": str(pki.web.bundle_path),
        },
    ) as running:
        yield running


def key_set(*certs: Svid) -> dict[str, Any]:
    return {
        "keys": [
            jwk_of(c.cert.public_key(), kid=f"c{i}", x5c=x5c_of(c.cert))
            for i, c in enumerate(certs)
        ]
    }


async def register(server: Running, *certs: Svid) -> str:
    registration = await operator(server).add_other(
        {
            "token_endpoint_auth_method": "self_signed_tls_client_auth",
            "jwks": key_set(*certs),
        },
        scopes=["edge.read"],
    )
    return registration.client.client_id


def look_alike(folder: Path, original: Svid) -> Svid:
    """Same subject, issuer, serial and dates; another key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = original.cert
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(key.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return write_svid(folder, "look-alike", builder.sign(key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
async def device(server: Running) -> tuple[str, Svid]:
    cert = self_signed(server.pki.folder, "device-1", dns="device-1.example")
    return await register(server, cert), cert


async def test_token_bound_to_the_registered_certificate(
    server: Running, device: tuple[str, Svid]
) -> None:
    client_id, cert = device
    r = await token_when_handshake_accepts(server, cert, client_id=client_id)
    assert r.status_code == 200, r.text
    claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"x5t#S256": cert.x5t}
    assert claims["sub"] == claims["client_id"] == client_id
    assert claims["scope"] == "edge.read"
    assert claims["exp"] <= cert.not_after.timestamp()


async def test_second_registered_certificate(server: Running) -> None:
    old = self_signed(server.pki.folder, "rotating-old")
    new = self_signed(server.pki.folder, "rotating-new")
    client_id = await register(server, old, new)
    for cert in (old, new):
        r = await token_when_handshake_accepts(server, cert, client_id=client_id)
        assert r.status_code == 200, r.text


async def test_look_alike_with_another_key_fails_the_handshake(
    server: Running, device: tuple[str, Svid]
) -> None:
    client_id, cert = device
    await token_when_handshake_accepts(server, cert, client_id=client_id)
    fake = look_alike(server.pki.folder, cert)
    assert fake.cert.subject == cert.cert.subject and fake.x5t != cert.x5t
    with pytest.raises((httpx.ConnectError, httpx.ReadError)):
        await server.token(fake, client_id=client_id)


async def test_look_alike_registered_by_someone_else(
    server: Running, device: tuple[str, Svid]
) -> None:
    client_id, cert = device
    folder = server.pki.folder / "other-registrant"
    folder.mkdir(exist_ok=True)
    fake = look_alike(folder, cert)
    other_id = await register(server, fake)
    assert (
        await token_when_handshake_accepts(server, fake, client_id=other_id)
    ).status_code == 200
    r = await server.token(fake, client_id=client_id)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert r.json()["error_description"] == (
        "certificate does not match a registered certificate"
    )


async def test_no_certificate_or_an_svid(
    server: Running, device: tuple[str, Svid]
) -> None:
    client_id, _ = device
    r = await server.token(None, client_id=client_id)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    svid = server.pki.example.issue(
        "not-the-device", ["spiffe://example.org/ns/d/sa/x"]
    )
    r = await server.token(svid, client_id=client_id)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


async def test_deleted_client_leaves_the_handshake(server: Running) -> None:
    cert = self_signed(server.pki.folder, "short-lived-device")
    client_id = await register(server, cert)
    assert (
        await token_when_handshake_accepts(server, cert, client_id=client_id)
    ).status_code == 200
    await operator(server).delete(client_id)
    for _ in range(50):
        try:
            r = await server.token(cert, client_id=client_id)
        except (httpx.ConnectError, httpx.ReadError):
            return
        assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
        await asyncio.sleep(0.1)
    raise AssertionError("the deleted certificate is still accepted at the handshake")


async def test_expired_certificate(server: Running) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "expired")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    svid = write_svid(server.pki.folder, "expired-self-signed", cert, key)
    client_id = await register(server, svid)
    r = await token_when_handshake_accepts(server, svid, client_id=client_id)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert (
        r.json()["error_description"]
        == "client certificate is expired or not yet valid"
    )


async def test_jwks_uri(server: Running, pki: Pki) -> None:
    keys = JwksServer(server_tls(pki.server.chain_path, pki.server.key_path))
    await keys.start()
    try:
        cert = self_signed(server.pki.folder, "uri-device")
        keys.serve_json(key_set(cert))
        registration = await operator(server).add_other(
            {
                "token_endpoint_auth_method": "self_signed_tls_client_auth",
                "jwks_uri": keys.url("/device"),
            }
        )
        client_id = registration.client.client_id
        r = await token_when_handshake_accepts(server, cert, client_id=client_id)
        assert r.status_code == 200, r.text
        assert keys.paths and set(keys.paths) == {"/device"}
    finally:
        await keys.close()


@pytest.mark.parametrize(
    "entry,message",
    [
        ("no-x5c", "has no x5c certificate"),
        ("key-not-the-certificates", "do not match its x5c"),
    ],
    ids=["no-x5c", "key-mismatch"],
)
async def test_registration_refused(server: Running, entry: str, message: str) -> None:
    cert = self_signed(server.pki.folder, f"refused-{entry}")
    if entry == "no-x5c":
        jwk = jwk_of(cert.cert.public_key())
    else:
        other = ec.generate_private_key(ec.SECP256R1())
        jwk = jwk_of(other.public_key(), x5c=x5c_of(cert.cert))
    with pytest.raises(InvalidClientMetadata, match=message):
        await operator(server).add_other(
            {
                "token_endpoint_auth_method": "self_signed_tls_client_auth",
                "jwks": {"keys": [jwk]},
            }
        )


async def test_self_registration_refused(server: Running) -> None:
    cert = self_signed(server.pki.folder, "wants-to-register")
    r = await server.register(
        None,
        {
            "token_endpoint_auth_method": "self_signed_tls_client_auth",
            "jwks": key_set(cert),
        },
    )
    assert (r.status_code, r.json()["error"]) == (403, "access_denied")
