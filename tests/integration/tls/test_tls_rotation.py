"""Rotation without a restart: client authorities and the server's own
certificate change under a running listener (swim-as issue 5, items 1-2).

New handshakes use the new context from the SNI callback, which runs also
when the client sends no server name (these clients connect to 127.0.0.1,
an IP address, so they send none). Connections already open keep theirs.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from typing import Any

import pytest


async def test_new_authorities_apply_to_new_handshakes(app, serve, client, pki):
    async with serve(app, [pki.root_a.cert]) as served:
        before = await client.open(served.port, client.context(pki.leaf_a))
        await before.get()
        await client.refused(served.port, client.context(pki.leaf_b))

        served.tls.update(client_authorities=[pki.root_b.cert])

        from_b = await client.get_once(served.port, client.context(pki.leaf_b))
        await client.refused(served.port, client.context(pki.leaf_a))
        still_open = await before.get()
        await before.close()

    assert from_b.json()["tls"]["client_cert_chain"] == [pki.leaf_b.pem]
    assert still_open.json()["tls"]["client_cert_chain"][0] == pki.leaf_a.pem
    assert served.tls.client_authorities == (pki.root_b.cert,)


async def test_removed_self_signed_certificate_is_refused(app, serve, client, pki):
    authorities = [pki.root_a.cert, pki.self_signed.cert]
    async with serve(app, authorities) as served:
        await client.get_once(served.port, client.context(pki.self_signed))

        served.tls.update(client_authorities=[pki.root_a.cert])

        await client.refused(served.port, client.context(pki.self_signed))

    assert len(app.scopes) == 1


@pytest.mark.parametrize(
    "server_hostname", ["127.0.0.1", "localhost"], ids=["no-sni", "sni"]
)
async def test_new_server_certificate_for_new_connections_only(
    app, serve, client, pki, server_hostname
):
    context = client.context(pki.leaf_a)
    async with serve(app) as served:
        kept = await client.open(served.port, context)
        await kept.get()

        served.tls.update(
            cert_file=pki.server_next.cert_file, key_file=pki.server_next.key_file
        )

        fresh = await client.open(served.port, context, server_hostname=server_hostname)
        fresh_response = await fresh.get()
        kept_response = await kept.get()
        await fresh.close()
        await kept.close()

    assert fresh.server_cert_der == pki.server_next.der
    assert kept.server_cert_der == pki.server.der
    assert kept_response.status == fresh_response.status == 200
    # Verify mode and flags stay those of the listener's first context, and
    # the new one has the same: the client chain still arrives.
    assert fresh_response.json()["tls"]["client_cert_chain"][0] == pki.leaf_a.pem


async def test_update_without_arguments_rereads_the_files(
    app, serve, client, pki, tmp_path
):
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key.pem"
    shutil.copy(pki.server.cert_file, cert_file)
    shutil.copy(pki.server.key_file, key_file)
    async with serve(app) as served:
        served.tls.update(cert_file=cert_file, key_file=key_file)
        first = await client.open(served.port, client.context())
        await first.close()

        # Replaced on disk as spiffe-helper and Kubernetes do: a new file
        # moved over the old name.
        shutil.copy(pki.server_next.cert_file, tmp_path / "next.pem")
        shutil.copy(pki.server_next.key_file, tmp_path / "next.key.pem")
        (tmp_path / "next.pem").replace(cert_file)
        (tmp_path / "next.key.pem").replace(key_file)
        served.tls.update()

        second = await client.open(served.port, client.context())
        await second.close()

    assert first.server_cert_der == pki.server.der
    assert second.server_cert_der == pki.server_next.der


async def test_failed_update_keeps_the_current_context(app, serve, client, pki):
    async with serve(app) as served:
        current = served.tls.current
        with pytest.raises(ssl.SSLError):
            # The next certificate with the current key: they do not match.
            served.tls.update(cert_file=pki.server_next.cert_file)
        connection = await client.open(served.port, client.context())
        await connection.close()

    assert served.tls.current is current
    assert connection.server_cert_der == pki.server.der


async def test_every_context_has_the_listeners_verify_settings(serve, app, pki):
    async with serve(app) as served:
        served.tls.update(client_authorities=[pki.root_b.cert])
        base, current = served.tls.context, served.tls.current

    assert current is not base
    assert current.verify_mode == base.verify_mode == ssl.CERT_OPTIONAL
    assert current.verify_flags == base.verify_flags
    assert current.minimum_version == base.minimum_version
    assert current.options == base.options


def test_rotation_under_uvloop(app, serve, client, pki):
    # The production loop: uvloop wraps Python's ssl objects the same way, so
    # the SNI callback switches contexts there too.
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[bytes, bytes, Any]:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with serve(app, [pki.root_a.cert]) as served:
            kept = await client.open(served.port, client.context(pki.leaf_a))
            await kept.get()
            served.tls.update(
                cert_file=pki.server_next.cert_file,
                key_file=pki.server_next.key_file,
                client_authorities=[pki.root_b.cert],
            )
            fresh = await client.open(served.port, client.context(pki.leaf_b))
            response = await fresh.get()
            await client.refused(served.port, client.context(pki.leaf_a))
            await kept.get()
            await fresh.close()
            await kept.close()
        return kept.server_cert_der, fresh.server_cert_der, response

    kept_cert, fresh_cert, response = uvloop.run(scenario())

    assert kept_cert == pki.server.der
    assert fresh_cert == pki.server_next.der
    assert response.json()["tls"]["client_cert_chain"] == [pki.leaf_b.pem]
