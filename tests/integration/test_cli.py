"""The swim-as command as an operator uses it: real processes, real files.

`swim-as dev` is run exactly as the README says and its printed curl is run
as printed; `serve` refuses bad configurations in one line instead of
crash-looping its workers.
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from tests.support.harness import TestPki, free_port

SWIM = Path(sys.executable).parent / "swim-as"


def swim(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SWIM_AS_")}
    environment.update(env or {})
    return subprocess.run(
        [str(SWIM), *args],
        cwd=cwd,
        env=environment,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def write_config(folder: Path, pki: TestPki, db_url: str, **extra: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    kek = folder / "kek"
    if not kek.exists():
        kek.write_text(base64.b64encode(os.urandom(32)).decode())
    values = {
        "bundle": str(pki.example.bundle_path),
        "cert": str(pki.server.chain_path),
        "key": str(pki.server.key_path),
        "kek": str(kek),
        **extra,
    }
    config = folder / "swim-as.toml"
    config.write_text(f"""
issuer = "https://127.0.0.1:{free_port()}"
[tls]
cert_file = "{values["cert"]}"
key_file = "{values["key"]}"
[database]
url = "{db_url}"
[[trust_domains]]
name = "example.org"
bundle_file = "{values["bundle"]}"
[keys]
encryption_key_file = "{values["kek"]}"
[tokens]
default_audience = "https://api.example.org"
""")
    return config


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("swim-as:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_no_configuration() -> None:
    assert "pass --config FILE" in one_line_error(swim("clients", "list"))


def test_configuration_is_a_directory(tmp_path: Path) -> None:
    assert "is a directory" in one_line_error(
        swim("clients", "list", "--config", str(tmp_path))
    )


def test_admin_before_migrate(tmp_path: Path, pki: TestPki) -> None:
    config = write_config(tmp_path, pki, f"sqlite+aiosqlite:///{tmp_path}/db.sqlite")
    error = one_line_error(swim("clients", "list", "--config", str(config)))
    assert "run `swim-as migrate` first" in error


@pytest.mark.parametrize(
    "setting,fragment",
    [
        (
            {"bundle": "/nonexistent/bundle.pem"},
            "/nonexistent/bundle.pem does not exist",
        ),
        ({"cert": "/nonexistent/cert.pem"}, "tls.cert_file: /nonexistent/cert.pem"),
        ({"kek": "/nonexistent/kek"}, "/nonexistent/kek"),
    ],
    ids=["bundle", "cert", "kek"],
)
def test_serve_refuses_bad_files(
    tmp_path: Path, pki: TestPki, setting: dict[str, str], fragment: str
) -> None:
    config = write_config(
        tmp_path, pki, f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", **setting
    )
    assert fragment in one_line_error(swim("serve", "--config", str(config)))


def test_serve_refuses_garbage_bundle(tmp_path: Path, pki: TestPki) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    config = write_config(
        tmp_path, pki, f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", bundle=str(garbage)
    )
    assert "trust domain example.org" in one_line_error(
        swim("serve", "--config", str(config))
    )


def test_serve_refuses_a_wrong_kek(tmp_path: Path, pki: TestPki) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/db.sqlite"
    config = write_config(tmp_path, pki, db)
    assert swim("migrate", "--config", str(config)).returncode == 0
    assert swim("keys", "rotate", "--config", str(config)).returncode == 0
    other = base64.b64encode(os.urandom(32)).decode()
    result = swim(
        "serve", "--config", str(config), env={"SWIM_AS_KEYS__ENCRYPTION_KEY": other}
    )
    assert "does not open signing key" in one_line_error(result)


def test_operator_commands(tmp_path: Path, pki: TestPki, postgres_server: str) -> None:
    import asyncio

    from tests.support.postgres import create_database

    db = asyncio.run(create_database(postgres_server))
    config = str(write_config(tmp_path, pki, db))
    migrated = swim("migrate", "--config", config)
    assert migrated.returncode == 0 and "migrated: empty -> " in migrated.stdout
    again = swim("--config", config, "migrate")  # --config before the command too
    assert again.returncode == 0 and "up to date" in again.stdout
    sid = "spiffe://example.org/ns/ops/sa/api"
    added = swim("clients", "add", sid, "--scope", "a.read", "--config", config)
    assert added.returncode == 0 and f"added: {sid}" in added.stdout
    assert swim("clients", "grant", sid, "b.write", "--config", config).returncode == 0
    listed = swim("clients", "list", "--config", config)
    assert f"{sid}\ttls_client_auth\tenabled\ta.read b.write" in listed.stdout
    assert swim("clients", "disable", sid, "--config", config).returncode == 0
    shown = swim("clients", "show", sid, "--config", config)
    assert '"disabled": true' in shown.stdout
    missing = swim("clients", "show", "spiffe://example.org/nope", "--config", config)
    assert "no such client" in one_line_error(missing)
    warned = swim("clients", "add", "spiffe://elsewhere.org/x", "--config", config)
    assert "elsewhere.org is not a configured trust domain" in warned.stderr
    audit = swim("audit", "--client", sid, "--json", "--config", config)
    events = [line for line in audit.stdout.splitlines() if line]
    assert [e.split('"event": "')[1].split('"')[0] for e in events] == [
        "client.added",
        "client.scopes_changed",
        "client.disabled",
    ]
    assert '"actor": "operator:' in audit.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_dev_prints_a_curl_that_works(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "dev.log").open("w")
    process = subprocess.Popen(
        [str(SWIM), "dev", "--port", str(port)],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        command = None
        for _ in range(150):
            text = (tmp_path / "dev.log").read_text()
            if "Application startup complete" in text:
                command = next(
                    line.strip()
                    for line in text.splitlines()
                    if line.strip().startswith("curl ")
                )
                break
            assert process.poll() is None, text
            time.sleep(0.2)
        assert command is not None, (tmp_path / "dev.log").read_text()
        result = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        assert '"token_type":"Bearer"' in result.stdout
        token = result.stdout.split('"access_token":"')[1].split('"')[0]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["sub"] == "spiffe://swim-as.test/ns/demo/sa/reporter"
        assert claims["scope"] == "reports.read" and "x5t#S256" in claims["cnf"]
        taken = swim("dev", "--port", str(port), cwd=tmp_path)
        assert "pass --port" in one_line_error(taken)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        log.close()
    assert "Traceback" not in (tmp_path / "dev.log").read_text()
