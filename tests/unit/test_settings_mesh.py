"""Mesh-mode and mTLS-listener settings: contradictions are refused at start-up
with a message that says what to change (D5, RFC 8705 §5)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from swim_as.cli import main
from swim_as.settings import Settings, load_settings

BASE = """
issuer = "https://as.example"
[tokens]
default_audience = "https://api.example"
"""
PROXY = "spiffe://example.org/ns/mesh/sa/sidecar"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "swim-as.toml"
    path.write_text(BASE + text)
    return path


def load(tmp_path: Path, text: str) -> Settings:
    return load_settings(write(tmp_path, text))


@pytest.mark.parametrize(
    "text,message",
    [
        ('[server]\nclient_certificate_source = "xfcc"\n', r"add a \[mesh\] section"),
        (
            '[mesh]\ntrusted_proxies = ["127.0.0.1"]\n',
            "forwarded headers would be ignored",
        ),
        (
            '[server]\nclient_certificate_source = "none"\n'
            '[mesh]\ntrusted_proxies = ["127.0.0.1"]\n',
            "forwarded headers would be ignored",
        ),
        (
            '[server]\nclient_certificate_source = "nginx"\n'
            '[mesh]\ntrusted_proxies = ["127.0.0.1"]\nexpected_by = "spiffe://a/b"\n',
            "expected_by applies to XFCC only",
        ),
        (
            '[server]\nclient_certificate_source = "rfc9440"\n'
            '[mesh]\ntrusted_proxies = ["127.0.0.1"]\nproxy_validates = true\n',
            "proxy_validates applies to XFCC only",
        ),
        (
            '[server]\nclient_certificate_source = "rfc9440"\n'
            '[mesh]\ntrusted_proxies = ["127.0.0.1"]\nheader = "x-cert"\n',
            "mesh.header cannot be set for rfc9440",
        ),
        (
            '[server]\nclient_certificate_source = "xfcc"\n'
            '[mesh]\ntrusted_proxies = ["0.0.0.0/0"]\n',
            "trusts every address",
        ),
        (
            '[server]\nclient_certificate_source = "xfcc"\n'
            "[mesh]\ntrusted_proxies = []\n",
            "at least 1",
        ),
        (
            '[server]\nclient_certificate_source = "xfcc"\n'
            '[mesh]\ntrusted_proxies = ["10.0.0.1/8"]\n',
            "not a valid IPv4 or IPv6 network",
        ),
        (
            '[server]\nclient_certificate_source = "xfcc"\n'
            '[mesh]\ntrusted_proxies = ["127.0.0.1"]\n'
            'proxy_spiffe_ids = ["spiffe://Example.org/x"]\n',
            "proxy_spiffe_ids",
        ),
        (
            '[server]\nclient_certificate_source = "nginx"\n'
            '[mesh]\ntrusted_proxies = ["127.0.0.1"]\nheader = "x cert"\n',
            "not a header name",
        ),
        (
            '[server]\nclient_certificate_source = "stdin"\n',
            "client_certificate_source",
        ),
        (
            '[server.mtls]\nport = 8444\nbase_url = "http://mtls.as.example"\n',
            "https URL",
        ),
        (
            '[server.mtls]\nport = 8444\nbase_url = "https://as.example"\n',
            "must differ from the issuer",
        ),
        (
            "[server]\nport = 8443\n"
            '[server.mtls]\nport = 8443\nbase_url = "https://mtls.as.example"\n',
            "same address and port",
        ),
    ],
    ids=[
        "forwarded-without-mesh",
        "mesh-with-tls-source",
        "mesh-with-none-source",
        "by-for-nginx",
        "validating-for-rfc9440",
        "header-for-rfc9440",
        "everyone-trusted",
        "no-proxies",
        "network-with-host-bits",
        "proxy-id-not-canonical",
        "bad-header-name",
        "unknown-source",
        "alias-not-https",
        "alias-is-issuer",
        "alias-same-port",
    ],
)
def test_contradictions_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load(tmp_path, text)


def test_everyone_trusted_only_with_proxy_ids(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[server]\nclient_certificate_source = "xfcc"\n'
        '[mesh]\ntrusted_proxies = ["0.0.0.0/0", "::/0"]\n'
        f'proxy_spiffe_ids = ["{PROXY}"]\n'
        '[tls]\ncert_file = "c.pem"\nkey_file = "k.pem"\n',
    )
    assert settings.mesh is not None and settings.mesh.proxy_spiffe_ids == [PROXY]
    assert settings.serving_problems() == []


@pytest.mark.parametrize(
    "source,header,expected",
    [
        ("xfcc", None, "x-forwarded-client-cert"),
        ("nginx", None, "x-ssl-client-cert"),
        ("nginx", "SSL-Client-Cert", "ssl-client-cert"),
        ("rfc9440", None, "client-cert"),
    ],
    ids=["xfcc", "nginx-default", "nginx-custom", "rfc9440"],
)
def test_forward_header(
    tmp_path: Path, source: str, header: str | None, expected: str
) -> None:
    extra = f'header = "{header}"\n' if header else ""
    settings = load(
        tmp_path,
        f'[server]\nclient_certificate_source = "{source}"\n'
        f'[mesh]\ntrusted_proxies = ["127.0.0.1"]\n{extra}',
    )
    assert settings.forward_header() == expected


def test_direct_mode_reads_no_header(tmp_path: Path) -> None:
    assert load(tmp_path, "").forward_header() is None


MESH = '[mesh]\ntrusted_proxies = ["127.0.0.1/32"]\n'


@pytest.mark.parametrize(
    "text,problem",
    [
        ("", "required to serve HTTPS"),
        ('[server]\nclient_certificate_source = "none"\n', "required to serve HTTPS"),
        ('[tls]\ncert_file = "c.pem"\n', "both tls.cert_file and tls.key_file"),
        (
            '[server]\nhost = "0.0.0.0"\nclient_certificate_source = "xfcc"\n' + MESH,
            "refusing plain HTTP on 0.0.0.0",
        ),
        (
            '[server]\nhost = "10.0.0.5"\nclient_certificate_source = "nginx"\n' + MESH,
            "refusing plain HTTP on 10.0.0.5",
        ),
        (
            '[server]\nclient_certificate_source = "xfcc"\n'
            + MESH
            + f'proxy_spiffe_ids = ["{PROXY}"]\n',
            "proxy_spiffe_ids needs TLS",
        ),
        (
            '[server]\nclient_certificate_source = "xfcc"\n'
            '[server.mtls]\nport = 8444\nbase_url = "https://m.as.example"\n' + MESH,
            "server.mtls needs tls.cert_file",
        ),
    ],
    ids=[
        "direct-without-tls",
        "none-without-tls",
        "cert-without-key",
        "plaintext-on-any",
        "plaintext-on-network",
        "proxy-ids-without-tls",
        "alias-without-tls",
    ],
)
def test_serving_problems(tmp_path: Path, text: str, problem: str) -> None:
    problems = load(tmp_path, text).serving_problems()
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    "host,extra",
    [
        ("127.0.0.1", ""),
        ("::1", ""),
        ("localhost", ""),
        ("0.0.0.0", "allow_plaintext = true\n"),
    ],
    ids=["loopback", "v6-loopback", "localhost", "explicitly-allowed"],
)
def test_plaintext_allowed(tmp_path: Path, host: str, extra: str) -> None:
    settings = load(
        tmp_path,
        f'[server]\nhost = "{host}"\nclient_certificate_source = "xfcc"\n'
        + MESH
        + extra,
    )
    assert settings.plaintext()
    assert settings.serving_problems() == []


def test_environment_sets_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWIM_AS_SERVER__CLIENT_CERTIFICATE_SOURCE", "xfcc")
    monkeypatch.setenv("SWIM_AS_MESH__TRUSTED_PROXIES", '["127.0.0.1/32", "::1"]')
    monkeypatch.setenv("SWIM_AS_MESH__EXPECTED_BY", "spiffe://example.org/as")
    settings = load(tmp_path, "")
    assert settings.mesh is not None
    assert [str(n) for n in settings.mesh.trusted_proxies] == [
        "127.0.0.1/32",
        "::1/128",
    ]
    assert settings.mesh.expected_by == "spiffe://example.org/as"


def test_serve_refuses_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        '[server]\nhost = "0.0.0.0"\nclient_certificate_source = "xfcc"\n' + MESH,
    )
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cannot serve" in err and "refusing plain HTTP on 0.0.0.0" in err


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    "name,source",
    [("envoy", "xfcc"), ("istio", "xfcc"), ("nginx", "nginx")],
    ids=["envoy", "istio", "nginx"],
)
def test_example_configurations_serve(name: str, source: str) -> None:
    """The shipped examples load and pass the start-up checks."""
    settings = load_settings(EXAMPLES / name / "swim-as.toml")
    assert settings.server.client_certificate_source == source
    assert settings.plaintext()
    assert settings.serving_problems() == []
