"""Settings and start-up checks of the lifecycle: policy, expiry, statements."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from swim_as.cli import CliError
from swim_as.cli_lifecycle import parse_duration, parse_time
from swim_as.clients.statements import StatementConfigError, covers, load_issuer
from swim_as.lifecycle import lifecycle_problem
from swim_as.settings import load_settings
from swim_as.spiffe.ids import SpiffeIdPattern

MINIMAL = """
issuer = "https://as.example"
[tokens]
default_audience = "https://api.example"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "swim-as.toml"
    path.write_text(MINIMAL + text)
    return path


def public_jwks(tmp_path: Path, *, private: bool = False) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(
        jwt.algorithms.ECAlgorithm.to_jwk(key if private else key.public_key())
    )
    path = tmp_path / "issuer.jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    return path


def test_paths_follow_the_file(tmp_path: Path) -> None:
    public_jwks(tmp_path)
    settings = load_settings(
        write(
            tmp_path,
            '[policy]\nfile = "policy.toml"\n'
            "[[software_statement_issuers]]\n"
            'issuer = "https://ctl.example"\njwks_file = "issuer.jwks.json"\n',
        )
    )
    assert settings.policy.file == tmp_path / "policy.toml"
    assert settings.software_statement_issuers[0].jwks_file == (
        tmp_path / "issuer.jwks.json"
    )
    assert settings.lifecycle.disable_after_seconds == 0


@pytest.mark.parametrize(
    "text,message",
    [
        ("[lifecycle]\ndisable_after_seconds = 60\n", "0 or >= 600"),
        ("[lifecycle]\ndelete_after_seconds = -1\n", "greater than or equal"),
        ("[lifecycle]\nseen_flush_seconds = 0\n", "greater than 0"),
        ("[policy]\nfiles = 'x'\n", "Extra inputs"),
        (
            "[[software_statement_issuers]]\nissuer = 'a'\njwks_file = 'x'\n"
            "[[software_statement_issuers]]\nissuer = 'a'\njwks_file = 'y'\n",
            "listed twice",
        ),
    ],
    ids=["idle-too-short", "negative", "flush-zero", "unknown-key", "duplicate-issuer"],
)
def test_refused_settings(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_settings(write(tmp_path, text))


def test_serve_refuses_a_bad_policy_or_issuer(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text('[[rule]]\nname = "a"\nmatch = "x"\n')
    settings = load_settings(write(tmp_path, '[policy]\nfile = "policy.toml"\n'))
    assert "rule 'a': match" in (lifecycle_problem(settings) or "")
    public_jwks(tmp_path, private=True)
    settings = load_settings(
        write(
            tmp_path,
            "[[software_statement_issuers]]\n"
            'issuer = "https://ctl.example"\njwks_file = "issuer.jwks.json"\n',
        )
    )
    assert "private key" in (lifecycle_problem(settings) or "")


def test_issuer_files(tmp_path: Path) -> None:
    good = public_jwks(tmp_path)
    issuer = load_issuer("https://ctl.example", good, ["spiffe://td/ns/a/*"])
    assert issuer.allows(SpiffeIdPattern.parse("spiffe://td/ns/a/b"))
    assert not issuer.allows(SpiffeIdPattern.parse("spiffe://td/ns/ab"))
    empty = tmp_path / "empty.json"
    empty.write_text('{"keys": []}')
    for path, patterns, message in [
        (empty, [], "no signing key"),
        (tmp_path / "missing.json", [], "cannot read"),
        (good, ["spiffe://td//x"], "invalid SPIFFE ID pattern"),
    ]:
        with pytest.raises(StatementConfigError, match=message):
            load_issuer("https://ctl.example", path, patterns)


@pytest.mark.parametrize(
    "outer,inner,expected",
    [
        ("spiffe://td/ns/*", "spiffe://td/ns/a", True),
        ("spiffe://td/ns/*", "spiffe://td/ns/a/*", True),
        ("spiffe://td/ns/*", "spiffe://td/ns/*", True),
        ("spiffe://td/*", "spiffe://td/ns/*", True),
        ("spiffe://td/ns/*", "spiffe://td/*", False),
        ("spiffe://td/ns/*", "spiffe://td/nsx/*", False),
        ("spiffe://td/ns/a", "spiffe://td/ns/a", True),
        ("spiffe://td/ns/a", "spiffe://td/ns/a/*", False),
        ("spiffe://td/ns/*", "spiffe://other/ns/a", False),
    ],
)
def test_covers(outer: str, inner: str, expected: bool) -> None:
    assert (
        covers(SpiffeIdPattern.parse(outer), SpiffeIdPattern.parse(inner)) is expected
    )


def test_durations_and_times() -> None:
    from datetime import UTC, datetime, timedelta

    assert parse_duration("90") == timedelta(seconds=90)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("7d") == timedelta(days=7)
    now = datetime(2026, 12, 4, tzinfo=UTC)
    assert parse_time("2h", now=now) == now - timedelta(hours=2)
    assert parse_time("2026-12-01T10:00:00") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_time("2026-12-01T10:00:00+01:00").utcoffset() == timedelta(hours=1)
    for bad in ("1w", "soon", ""):
        with pytest.raises(CliError):
            parse_time(bad) if bad != "1w" else parse_duration(bad)
