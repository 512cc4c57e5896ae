"""Settings of bundle sources, the serving certificate and key timing.

One source per trust domain (file, bundle endpoint or Workload API); an
https_spiffe endpoint needs its SPIFFE ID and a bundle to check it with
(SPIFFE Federation §5.2.2); the JWKS cache must end before a published key
signs (D7).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from swim_as.settings import KEY_RELOAD_SECONDS, load_settings

MINIMAL = """
issuer = "https://as.example"
[tokens]
default_audience = "https://api.example"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "swim-as.toml"
    path.write_text(MINIMAL + text)
    return path


def test_every_source_kind(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            """
[workload_api]
socket = "unix:///run/spire/sockets/agent.sock"

[[trust_domains]]
name = "files.example"
bundle_file = "bundles/files.pem"

[[trust_domains]]
name = "web.example"
bundle_endpoint_url = "https://bundles.web.example/bundle"
bundle_endpoint_ca_file = "ca/enterprise.pem"
max_bundle_age_seconds = 3600

[[trust_domains]]
name = "partner.example"
bundle_endpoint_url = "https://spire.partner.example:8443"
bundle_endpoint_profile = "https_spiffe"
bundle_endpoint_spiffe_id = "spiffe://partner.example/spire/server"
bundle_file = "bundles/partner-bootstrap.json"

[[trust_domains]]
name = "mesh.example"
workload_api = true

[[trust_domains]]
name = "edge.example"
workload_api_socket = "unix:///run/edge/agent.sock"
""",
        )
    )
    files, web, partner, mesh, edge = settings.trust_domains
    assert [d.source for d in settings.trust_domains] == [
        "file",
        "bundle_endpoint",
        "bundle_endpoint",
        "workload_api",
        "workload_api",
    ]
    assert web.bundle_endpoint_ca_file == tmp_path / "ca/enterprise.pem"
    assert web.max_bundle_age_seconds == 3600
    assert files.max_bundle_age_seconds == 86400
    assert partner.bundle_file == tmp_path / "bundles/partner-bootstrap.json"
    assert web.bundle_endpoint_timeout_seconds == 10
    assert web.bundle_endpoint_max_bytes == 1024 * 1024


def test_serving_certificate_from_the_workload_api(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            """
[tls]
source = "workload_api"
spiffe_id = "spiffe://prod.example/ns/auth/sa/swim-as"
[workload_api]
socket = "unix:///run/spire/sockets/agent.sock"
""",
        )
    )
    assert settings.tls.source == "workload_api"


ENDPOINT = '[[trust_domains]]\nname = "a.org"\nbundle_endpoint_url = '


@pytest.mark.parametrize(
    "text,fragment",
    [
        (ENDPOINT + '"http://a.org/bundle"\n', "must be https"),
        (ENDPOINT + '"https://user:pw@a.org/b"\n', "no userinfo"),
        (
            ENDPOINT + '"https://a.org/b"\nbundle_endpoint_profile = "https_spiffe"\n',
            "needs bundle_endpoint_spiffe_id",
        ),
        (
            ENDPOINT + '"https://a.org/b"\nbundle_endpoint_profile = "https_spiffe"\n'
            'bundle_endpoint_spiffe_id = "spiffe://a.org/spire/server"\n',
            "needs bundle_file, the bootstrap bundle",
        ),
        (
            ENDPOINT + '"https://a.org/b"\nbundle_endpoint_profile = "https_spiffe"\n'
            'bundle_endpoint_spiffe_id = "spiffe://b.org/spire/server"\n',
            "'b.org' is not configured",
        ),
        (
            ENDPOINT + '"https://a.org/b"\nbundle_endpoint_profile = "https_spiffe"\n'
            'bundle_endpoint_spiffe_id = "spiffe://A.org/x"\nbundle_file = "x"\n',
            "invalid",
        ),
        (
            ENDPOINT + '"https://a.org/b"\n'
            'bundle_endpoint_spiffe_id = "spiffe://a.org/spire/server"\n',
            "is for the https_spiffe profile",
        ),
        (
            ENDPOINT + '"https://a.org/b"\njwt_bundle_file = "x"\n',
            "drop jwt_bundle_file",
        ),
        (ENDPOINT + '"https://a.org/b"\nworkload_api = true\n', "exclude each other"),
        (
            '[[trust_domains]]\nname = "a.org"\nbundle_file = "x"\n'
            "workload_api = true\n",
            "exclude each other",
        ),
        ('[[trust_domains]]\nname = "a.org"\nworkload_api = true\n', "socket"),
        (
            '[[trust_domains]]\nname = "a.org"\nbundle_file = "x"\n'
            'bundle_endpoint_ca_file = "ca.pem"\n',
            "need bundle_endpoint_url",
        ),
        (
            '[[trust_domains]]\nname = "a.org"\nbundle_file = "x"\n'
            "max_bundle_age_seconds = 0\n",
            "max_bundle_age_seconds",
        ),
        ('[tls]\nsource = "workload_api"\n', "workload_api.socket"),
        (
            '[tls]\nsource = "workload_api"\ncert_file = "c.pem"\n'
            '[workload_api]\nsocket = "unix:///s"\n',
            "not read with tls.source = workload_api",
        ),
        ('[tls]\nspiffe_id = "spiffe://a.org/x"\n', "needs tls.source"),
        (
            "[keys]\njwks_max_age_seconds = 300\npublish_lead_seconds = 300\n",
            "key reload bound",
        ),
    ],
    ids=[
        "http-endpoint",
        "userinfo",
        "spiffe-without-id",
        "self-served-without-bootstrap",
        "endpoint-id-in-unknown-trust-domain",
        "endpoint-id-not-strict",
        "web-with-spiffe-id",
        "endpoint-with-jwt-file",
        "endpoint-and-workload-api",
        "file-and-workload-api",
        "workload-api-without-socket",
        "ca-file-without-endpoint",
        "zero-max-age",
        "tls-workload-api-without-socket",
        "tls-workload-api-with-files",
        "tls-spiffe-id-with-files",
        "jwks-cached-past-the-lead",
    ],
)
def test_refused(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        load_settings(write(tmp_path, text))


def test_jwks_max_age_leaves_room_for_the_reload_bound(tmp_path: Path) -> None:
    lead = 300 + KEY_RELOAD_SECONDS + 1
    settings = load_settings(
        write(
            tmp_path,
            f"[keys]\njwks_max_age_seconds = 300\npublish_lead_seconds = {lead}\n",
        )
    )
    assert settings.keys.publish_lead_seconds == lead
    # Without a lead time every rotation is immediate: no JWKS caching.
    zero = load_settings(
        write(tmp_path, "[keys]\njwks_max_age_seconds = 0\npublish_lead_seconds = 0\n")
    )
    assert zero.keys.publish_lead_seconds == 0


def test_example_configuration_loads() -> None:
    example = Path(__file__).parents[2] / "examples" / "swim-as.toml"
    settings = load_settings(example)
    assert {d.source for d in settings.trust_domains} == {
        "file",
        "bundle_endpoint",
        "workload_api",
    }
