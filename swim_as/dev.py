"""``swim-as dev``: a working server on this machine with no configuration.

The first run creates, in the state folder: a web CA and a server certificate
for 127.0.0.1, a SPIFFE trust domain ``swim-as.test`` with demo workload
SVIDs, a key-encryption key, a SQLite database and a ``swim-as.toml`` that
``swim-as serve --config`` accepts as it is. Later runs reuse them (renewing
certificates close to expiry). It then migrates, registers the demo
workloads with a scope each, prints a ``curl`` command that gets a token, and
serves on https://127.0.0.1:8443.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shlex
import socket
from pathlib import Path

from swim_as.devpki import DevAuthority, needs_renewal
from swim_as.settings import load_settings

log = logging.getLogger("swim_as.dev")

TRUST_DOMAIN = "swim-as.test"
AUDIENCE = "https://api.swim-as.test"
# Demo workloads and the scope an operator grants each of them.
DEMO = {
    "reporter": ("spiffe://swim-as.test/ns/demo/sa/reporter", ["reports.read"]),
    "billing": ("spiffe://swim-as.test/ns/demo/sa/billing", ["invoices.write"]),
    "payments": ("spiffe://swim-as.test/ns/demo/sa/payments", ["payments.read"]),
}

CONFIG = """\
# Written by `swim-as dev` at every start: edits here are overwritten. Copy
# this file elsewhere and use `swim-as serve --config` to change settings.
# A development configuration: do not use it in production. Every key is
# described in the README.
issuer = "https://127.0.0.1:{port}"

[server]
host = "127.0.0.1"
port = {port}

[tls]
cert_file = "pki/server.pem"
key_file = "pki/server.key.pem"

[database]
url = "sqlite+aiosqlite:///swim-as.db"

[[trust_domains]]
name = "{trust_domain}"
bundle_file = "pki/trust-domain-ca.pem"

[keys]
encryption_key_file = "kek"

[tokens]
default_audience = "{audience}"
lifetime_seconds = 300

[logging]
format = "text"
"""


def prepare(state: Path, port: int) -> Path:
    """Create (once) or refresh the dev state; return the config path."""
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    pki = state / "pki"
    web = DevAuthority(pki, "web-ca", None)
    if needs_renewal(pki / "server.pem"):
        web.issue(pki, "server", dns=("localhost",), ips=("127.0.0.1",), client=False)
    authority = DevAuthority(pki, "trust-domain-ca", TRUST_DOMAIN)
    for stem, (spiffe_id, _) in DEMO.items():
        if needs_renewal(pki / f"{stem}.pem", days=2):
            authority.issue(pki, stem, uri=spiffe_id, days=14)
    kek = state / "kek"
    if not kek.exists():
        fd = os.open(kek, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    config = state / "swim-as.toml"
    text = CONFIG.format(port=port, trust_domain=TRUST_DOMAIN, audience=AUDIENCE)
    if not config.exists() or config.read_text() != text:
        config.write_text(text)
    return config


async def register_demo(config: Path) -> None:
    """Register the demo workloads and grant each its scope (idempotent)."""
    from swim_as.app import build_services, enabled_methods
    from swim_as.clients.admin import ClientAdmin

    services = build_services(load_settings(config))
    try:
        admin = ClientAdmin(
            services.db,
            services.clients,
            services.registration,
            services.clock,
            enabled_methods=frozenset(enabled_methods(services.settings)),
            actor="swim-as dev",
        )
        for stem, (spiffe_id, scopes) in DEMO.items():
            await admin.add(
                spiffe_id,
                method="tls_client_auth",
                scopes=scopes,
                client_name=f"demo {stem}",
            )
    finally:
        await services.db.close()


def curl_command(state: Path, port: int, stem: str = "reporter") -> str:
    pki = state / "pki"
    spiffe_id = DEMO[stem][0]
    return " ".join(
        [
            "curl",
            "--cacert",
            shlex.quote(str(pki / "web-ca.pem")),
            "--cert",
            shlex.quote(str(pki / f"{stem}.pem")),
            "--key",
            shlex.quote(str(pki / f"{stem}.key.pem")),
            f"https://127.0.0.1:{port}/token",
            "-d",
            "grant_type=client_credentials",
            "--data-urlencode",
            f"client_id={spiffe_id}",
        ]
    )


def _port_is_free(port: int) -> None:
    """Fail before printing anything when the port is taken."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise OSError(
                f"127.0.0.1:{port} is not free ({err.strerror}): "
                "stop what uses it or pass --port"
            ) from err


def run_dev(state: Path, *, port: int = 8443) -> None:
    """Prepare everything, print how to get a token, and serve."""
    from swim_as.process import serve
    from swim_as.storage.migrate import upgrade

    _port_is_free(port)
    config = prepare(state, port)
    settings = load_settings(config)
    upgrade(settings.database.url)
    asyncio.run(register_demo(config))
    print(
        "\nswim-as dev: a development server with a throwaway PKI in "
        f"{state}\n"
        f"  configuration: {config}\n"
        f"  trust domain:  spiffe://{TRUST_DOMAIN} "
        f"(demo workloads: {', '.join(DEMO)})\n\n"
        "Get a certificate-bound access token as the demo 'reporter' workload:\n\n"
        f"  {curl_command(state, port)}\n",
        flush=True,
    )
    serve(settings)
