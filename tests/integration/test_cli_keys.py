"""``swim-as keys list|rotate`` and a key-encryption key that does not fit.

The commands run as an operator runs them (``main([...])`` with a TOML
file) against an SQLite database in a temporary folder.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from swim_as.cli import main
from tests.support import harness


@pytest.fixture
def config(tmp_path: Path, pki: harness.TestPki) -> Path:
    kek = tmp_path / "kek"
    kek.write_text(base64.b64encode(os.urandom(32)).decode())
    path = tmp_path / "swim-as.toml"
    path.write_text(
        f"""
issuer = "https://127.0.0.1:8443"
[tls]
cert_file = "{pki.server.chain_path}"
key_file = "{pki.server.key_path}"
[database]
url = "sqlite+aiosqlite:///{tmp_path / "swim.db"}"
[[trust_domains]]
name = "example.org"
bundle_file = "{pki.example.bundle_path}"
[keys]
encryption_key_file = "kek"
[tokens]
default_audience = "https://api.example"
"""
    )
    assert main(["migrate", "--config", str(path)]) == 0
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_keys_rotate_and_list(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ("--config", str(config))
    assert run(capsys, "keys", "list", *cfg)[1].startswith("no signing keys yet")

    status, out, _ = run(capsys, "keys", "rotate", *cfg)
    assert status == 0
    assert "starts signing in 900 s" in out
    next_kid = out.split()[2]
    status, out, _ = run(capsys, "keys", "list", *cfg)
    assert out.splitlines()[0].split("\t")[:3] == [next_kid, "ES256", "next"]

    status, out, _ = run(capsys, "keys", "rotate", "--now", *cfg)
    assert status == 0 and "starts signing now" in out
    urgent = out.split()[2]
    listing = {
        line.split("\t")[0]: line.split("\t")[2]
        for line in run(capsys, "keys", "list", *cfg)[1].splitlines()
    }
    assert listing == {next_kid: "retiring", urgent: "active"}


def test_wrong_kek_is_refused_with_a_clear_message(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ("--config", str(config))
    assert run(capsys, "keys", "rotate", "--now", *cfg)[0] == 0
    (config.parent / "kek").write_text(base64.b64encode(os.urandom(32)).decode())

    status, _, err = run(capsys, "serve", *cfg)
    assert status == 2
    assert "does not open signing key" in err
    assert "is not the key-encryption key" in err

    status, _, err = run(capsys, "keys", "rotate", *cfg)
    assert status == 2
    assert err.startswith("swim-as: not rotating: the key-encryption key does not open")
