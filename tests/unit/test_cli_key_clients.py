"""`swim-as clients add-key-client` and `add-secret-client` on SQLite."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from swim_as.cli import main
from tests.support.jose import jwk_of


def config(tmp_path: Path, extra: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    kek = tmp_path / "kek"
    kek.write_text(base64.b64encode(os.urandom(32)).decode())
    path = tmp_path / "swim-as.toml"
    path.write_text(
        f"""
issuer = "https://as.example"
[database]
url = "sqlite+aiosqlite:///{tmp_path}/swim.db"
[keys]
encryption_key_file = "{kek}"
[tokens]
default_audience = "https://api.example"
{extra}
"""
    )
    assert main(["migrate", "--config", str(path)]) == 0
    return path


def test_add_key_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path)
    jwks = tmp_path / "jwks.json"
    key = ec.generate_private_key(ec.SECP256R1())
    jwks.write_text(json.dumps({"keys": [jwk_of(key.public_key(), kid="k1")]}))
    capsys.readouterr()
    status = main(
        [
            "clients",
            "add-key-client",
            "--method",
            "private_key_jwt",
            "--jwks",
            str(jwks),
            "--scope",
            "jobs.run",
            "--name",
            "nightly",
            "--config",
            str(path),
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    first, _, rest = out.partition("\n")
    assert first.startswith("added: ")
    shown = json.loads(rest)
    assert shown["client_id"] == first.removeprefix("added: ")
    assert shown["auth_method"] == "private_key_jwt"
    assert shown["granted_scopes"] == ["jobs.run"]
    assert shown["metadata"]["jwks"]["keys"][0]["kid"] == "k1"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--jwks-uri", "https://127.0.0.1/jwks"], "loopback"),
        (["--jwks-uri", "http://keys.example/jwks"], "https"),
        (["--jwks", "missing.json"], "cannot read"),
    ],
    ids=["loopback", "http", "missing-file"],
)
def test_add_key_client_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    path = config(tmp_path)
    status = main(
        ["clients", "add-key-client", "--method", "private_key_jwt", *args]
        + ["--config", str(path)]
    )
    assert status == 2
    assert message in capsys.readouterr().err


def test_add_secret_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    off = config(tmp_path / "off")
    status = main(
        ["clients", "add-secret-client", "--method", "client_secret_basic"]
        + ["--config", str(off)]
    )
    assert status == 2
    assert "not supported" in capsys.readouterr().err

    on = config(
        tmp_path / "on",
        '[client_auth]\nmethods = ["spiffe_x509", "client_secret_basic"]\n',
    )
    capsys.readouterr()
    status = main(
        ["clients", "add-secret-client", "--method", "client_secret_basic"]
        + ["--config", str(on)]
    )
    assert status == 0
    out = capsys.readouterr().out
    secret = out.strip().splitlines()[-1]
    assert "shown once" in out and len(secret) >= 43
