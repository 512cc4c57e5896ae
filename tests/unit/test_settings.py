"""Settings: the TOML file, SWIM_AS_* overrides, and refusals at load time."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from swim_as.settings import load_settings

MINIMAL = """
issuer = "https://as.example"
[tokens]
default_audience = "https://api.example"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "swim-as.toml"
    path.write_text(text)
    return path


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.issuer == "https://as.example"
    assert settings.server.port == 8443 and settings.server.workers == 1
    assert settings.tokens.lifetime_seconds == 300
    assert settings.keys.algorithm == "ES256"
    assert settings.tls.min_version == "1.2"


def test_environment_overrides_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL + "[server]\nport = 9000\nhost = '0.0.0.0'\n")
    monkeypatch.setenv("SWIM_AS_SERVER__PORT", "9443")
    monkeypatch.setenv("SWIM_AS_TOKENS__LIFETIME_SECONDS", "120")
    settings = load_settings(path)
    assert settings.server.port == 9443
    assert settings.server.host == "0.0.0.0"  # kept from the file
    assert settings.tokens.lifetime_seconds == 120
    assert settings.tokens.default_audience == "https://api.example"


def test_relative_paths_follow_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """
[tls]
cert_file = "tls/server.pem"
key_file = "/abs/key.pem"
[database]
url = "sqlite+aiosqlite:///state/swim.db"
[[trust_domains]]
name = "example.org"
bundle_file = "bundles/example.pem"
""",
    )
    settings = load_settings(path)
    assert settings.tls.cert_file == tmp_path / "tls/server.pem"
    assert settings.tls.key_file == Path("/abs/key.pem")
    assert settings.database.url == f"sqlite+aiosqlite:///{tmp_path}/state/swim.db"
    assert settings.trust_domains[0].bundle_file == tmp_path / "bundles/example.pem"


def test_kek_from_file_and_variable(tmp_path: Path) -> None:
    kek = os.urandom(32)
    (tmp_path / "kek").write_text(base64.b64encode(kek).decode() + "\n")
    settings = load_settings(
        write(tmp_path, MINIMAL + '[keys]\nencryption_key_file = "kek"\n')
    )
    assert settings.keys.load_kek() == kek
    inline = load_settings(
        write(
            tmp_path,
            MINIMAL + f'[keys]\nencryption_key = "{base64.b64encode(kek).decode()}"\n',
        )
    )
    assert inline.keys.load_kek() == kek
    assert base64.b64encode(kek).decode() not in repr(inline)


@pytest.mark.parametrize(
    "value,message",
    [
        ("not base64!", "not base64"),
        (base64.b64encode(b"short").decode(), "must be 32 bytes"),
    ],
)
def test_bad_kek(tmp_path: Path, value: str, message: str) -> None:
    settings = load_settings(
        write(tmp_path, MINIMAL + f'[keys]\nencryption_key = "{value}"\n')
    )
    with pytest.raises(ValueError, match=message):
        settings.keys.load_kek()


@pytest.mark.parametrize(
    "text,fragment",
    [
        (MINIMAL.replace("https://as.example", "http://as.example"), "https URL"),
        (MINIMAL.replace("https://as.example", "https://as.example/?x=1"), "no query"),
        (MINIMAL + "[server]\nport = 70000\n", "port"),
        (MINIMAL + "[server]\nunknown = 1\n", "unknown"),
        (MINIMAL + "bogus = 1\n", "bogus"),
        (MINIMAL + '[database]\nurl = "postgresql://x/y"\n', r"postgresql\+asyncpg"),
        (MINIMAL + '[[trust_domains]]\nname = "a.org"\n', "bundle_file"),
        (
            MINIMAL + '[[trust_domains]]\nname = "a.org"\nbundle_file = "x"\n'
            '[[trust_domains]]\nname = "a.org"\nbundle_file = "y"\n',
            "listed twice",
        ),
        (MINIMAL + "[keys]\nretire_after_seconds = 100\n", "retire_after_seconds"),
        (
            MINIMAL
            + "[keys]\njwks_max_age_seconds = 1000\npublish_lead_seconds = 600\n",
            "jwks_max_age_seconds",
        ),
        ('issuer = "https://as.example"\n', "tokens"),
    ],
    ids=[
        "http-issuer",
        "query-issuer",
        "port",
        "unknown-server-key",
        "unknown-top-key",
        "sync-driver",
        "no-bundle",
        "duplicate-td",
        "retire-too-short",
        "max-age-over-lead",
        "no-tokens",
    ],
)
def test_refused_at_load(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        load_settings(write(tmp_path, text))


def test_client_auth_defaults(tmp_path: Path) -> None:
    auth = load_settings(write(tmp_path, MINIMAL)).client_auth
    assert auth.methods == [
        "tls_client_auth",
        "spiffe_x509",
        "spiffe_jwt",
        "self_signed_tls_client_auth",
        "private_key_jwt",
    ]
    assert not auth.client_secrets_enabled
    assert auth.assertion_max_lifetime_seconds == 600
    assert auth.assertion_leeway_seconds == 30
    assert auth.key_refresh_interval_seconds == 30
    assert auth.jwks_uri_allowed_networks == []


def test_client_auth_file_and_paths(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            MINIMAL
            + """
[client_auth]
methods = ["spiffe_x509", "client_secret_basic"]
jwks_uri_allowed_networks = ["10.0.0.0/8", "fd00::/8"]
jwks_uri_ca_file = "cas/internal.pem"
""",
        )
    )
    auth = settings.client_auth
    assert auth.methods == ["spiffe_x509", "client_secret_basic"]
    assert auth.client_secrets_enabled
    assert auth.jwks_uri_ca_file == tmp_path / "cas/internal.pem"


@pytest.mark.parametrize(
    "section,fragment",
    [
        ('methods = ["tls_client_auth", "tls_client_auth"]', "twice"),
        ('methods = ["none"]', "methods"),
        ('jwks_uri_allowed_networks = ["10.0.0.1/8"]', "not a CIDR block"),
        ('jwks_uri_allowed_networks = ["example.org"]', "not a CIDR block"),
        ("assertion_max_lifetime_seconds = 0", "assertion_max_lifetime_seconds"),
        ("key_refresh_interval_seconds = 0.1", "key_refresh_interval_seconds"),
    ],
    ids=["duplicate", "unknown-method", "host-bits", "name", "lifetime", "refresh"],
)
def test_client_auth_refused(tmp_path: Path, section: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        load_settings(write(tmp_path, MINIMAL + "[client_auth]\n" + section + "\n"))
