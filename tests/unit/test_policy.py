"""Policy files (D8): loading, refusals that name the rule, matching, decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swim_as.cli import main
from swim_as.errors import InvalidScope, InvalidTarget
from swim_as.policy.engine import combine, explain
from swim_as.policy.rules import PolicyError, parse_policy

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.toml"

POLICY = b"""
[[rule]]
name = "td"
match = "spiffe://prod.example/*"
scopes = ["health"]
jit = true

[[rule]]
name = "ns"
match = "spiffe://prod.example/ns/payments/*"
scopes = ["payments.read"]
audiences = ["https://payments.example", "https://ledger.example"]
default_audience = "https://payments.example"
max_lifetime_seconds = 600
self_register = true

[[rule]]
name = "deep"
match = "spiffe://prod.example/ns/payments/sa/*"
scopes = ["payments.read", "payments.list"]

[[rule]]
name = "api"
match = "spiffe://prod.example/ns/payments/sa/api"
scopes = ["payments.read", "payments.write"]
audiences = ["https://payments.example"]
max_lifetime_seconds = 60
"""


def errors_of(text: str | bytes) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode()
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, "test.toml")
    return caught.value.errors


@pytest.mark.parametrize(
    "spiffe_id,rule",
    [
        ("spiffe://prod.example/ns/payments/sa/api", "api"),
        ("spiffe://prod.example/ns/payments/sa/batch", "deep"),
        ("spiffe://prod.example/ns/payments/sa/api/extra", "deep"),
        ("spiffe://prod.example/ns/payments/cron", "ns"),
        ("spiffe://prod.example/ns/payments", "td"),
        ("spiffe://prod.example/ns/payments-old/sa/api", "td"),
        ("spiffe://prod.example/x", "td"),
        ("spiffe://other.example/ns/payments/sa/api", None),
        ("spiffe://prod.example.evil/ns/payments/sa/api", None),
    ],
    ids=[
        "exact",
        "longer-prefix",
        "below-exact",
        "shorter-prefix",
        "prefix-itself-is-not-below",
        "not-a-segment-boundary",
        "trust-domain",
        "other-trust-domain",
        "lookalike-trust-domain",
    ],
)
def test_most_specific_rule_wins(spiffe_id: str, rule: str | None) -> None:
    policy = parse_policy(POLICY, "test.toml")
    found = policy.rule_for(spiffe_id)
    assert (found.name if found else None) == rule
    # The cached answer is the same answer.
    assert policy.rule_for(spiffe_id) is found
    matched = [r.name for r in policy.matching(spiffe_id)]
    assert (matched[0] if matched else None) == rule
    assert [r.specificity for r in policy.matching(spiffe_id)] == sorted(
        (r.specificity for r in policy.matching(spiffe_id)), reverse=True
    )


def test_a_new_policy_starts_with_an_empty_cache() -> None:
    old = parse_policy(POLICY, "a")
    assert old.rule_for("spiffe://prod.example/ns/payments/sa/api").name == "api"  # type: ignore[union-attr]
    new = parse_policy(POLICY.replace(b'name = "api"', b'name = "api2"'), "a")
    assert new.rule_for("spiffe://prod.example/ns/payments/sa/api").name == "api2"  # type: ignore[union-attr]
    assert new.sha256 != old.sha256


@pytest.mark.parametrize(
    "text,expected",
    [
        ('[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\nscopes = [\n', "TOML syntax"),
        (b"\xff", "not UTF-8"),
        ("rules = []\n", "unknown top-level key 'rules'"),
        ('[rule]\nname = "a"\n', "'rule' must be an array of tables"),
        (
            '[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\nscope = ["s"]\n',
            "rule 'a': unknown key 'scope'",
        ),
        (
            '[[rule]]\nname = "a"\nmatch = "spiffe://x//y/*"\n',
            "rule 'a': match: invalid SPIFFE ID pattern",
        ),
        (
            '[[rule]]\nname = "a"\nmatch = "spiffe://X/y"\n',
            "rule 'a': match: invalid SPIFFE ID pattern",
        ),
        ('[[rule]]\nname = "a"\nmatch = "spiffe://x/*/y"\n', "only as the whole last"),
        ('[[rule]]\nname = "a"\nmatch = "spiffe://x/y*"\n', "only as the whole last"),
        ('[[rule]]\nname = "a"\nmatch = "https://x/y"\n', "rule 'a': match"),
        ('[[rule]]\nname = "a"\nmatch = "spiffe://x"\n', "write 'spiffe://x/*'"),
        ('[[rule]]\nname = "a"\n', "rule 'a': 'match' is required"),
        ('[[rule]]\nmatch = "spiffe://x/y"\n', "rule #1: 'name' is required"),
        ('[[rule]]\nname = "a b"\nmatch = "spiffe://x/y"\n', "rule #1: 'name'"),
        (
            '[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\naudiences = ["not a uri"]\n',
            "rule 'a': audiences: 'not a uri' is not an absolute URI",
        ),
        (
            '[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\naudiences = ["https://a/#f"]\n',
            "has a fragment",
        ),
        (
            '[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\ndefault_audience = "/rel"\n',
            "rule 'a': default_audience",
        ),
        (
            '[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\nscopes = "read"\n',
            "rule 'a': scopes must be a list",
        ),
        (
            '[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\nscopes = ["a\\"b"]\n',
            "is not a scope",
        ),
        (
            '[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\nmax_lifetime_seconds = 5\n',
            "max_lifetime_seconds must be an integer from 10",
        ),
        (
            '[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\n'
            "max_lifetime_seconds = true\n",
            "max_lifetime_seconds must be an integer",
        ),
        ('[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\njit = "yes"\n', "jit must be"),
        (
            '[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\n'
            '[[rule]]\nname = "a"\nmatch = "spiffe://x/z"\n',
            "the name is already used by rule #1",
        ),
        (
            '[[rule]]\nname = "one"\nmatch = "spiffe://x/ns/*"\nscopes = ["a"]\n'
            '[[rule]]\nname = "two"\nmatch = "spiffe://x/ns/*"\nscopes = ["b"]\n',
            "rule 'one' and rule 'two' both match spiffe://x/ns/* and are "
            "equally specific",
        ),
        (
            '[[rule]]\nname = "one"\nmatch = "spiffe://x/ns/a"\n'
            '[[rule]]\nname = "two"\nmatch = "spiffe://x/ns/a"\njit = 1\n',
            "rule 'one' and rule 'two' both match spiffe://x/ns/a",
        ),
    ],
    ids=[
        "syntax-error",
        "not-utf8",
        "unknown-top-level-key",
        "rule-not-array",
        "unknown-rule-key",
        "empty-segment",
        "uppercase-trust-domain",
        "star-in-the-middle",
        "partial-segment-star",
        "not-spiffe",
        "root-id",
        "no-match",
        "no-name",
        "bad-name",
        "audience-not-uri",
        "audience-fragment",
        "relative-default-audience",
        "scopes-not-list",
        "scope-bad-char",
        "lifetime-too-short",
        "lifetime-bool",
        "flag-not-bool",
        "duplicate-name",
        "tie-prefix",
        "tie-exact-even-when-one-is-otherwise-bad",
    ],
)
def test_bad_files_are_refused_naming_the_rule(
    text: str | bytes, expected: str
) -> None:
    problems = errors_of(text)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = errors_of(
        'oops = 1\n[[rule]]\nname = "a"\nmatch = "spiffe://x//y"\nscope = []\n'
        '[[rule]]\nname = "b"\nmatch = "spiffe://x/y"\njit = 2\n'
    )
    assert len(problems) == 4, problems


def test_different_prefixes_of_equal_length_do_not_tie() -> None:
    policy = parse_policy(
        b'[[rule]]\nname = "a"\nmatch = "spiffe://x/ns/a/*"\n'
        b'[[rule]]\nname = "b"\nmatch = "spiffe://x/ns/b/*"\n'
        b'[[rule]]\nname = "c"\nmatch = "spiffe://x/ns/a"\n',
        "t",
    )
    assert len(policy.rules) == 3


def test_an_empty_policy_denies_everything() -> None:
    policy = parse_policy(b"", "empty.toml")
    assert policy.rules == () and policy.rule_for("spiffe://x/y") is None


def test_the_example_file_is_valid() -> None:
    policy = parse_policy(EXAMPLE.read_bytes(), str(EXAMPLE))
    assert len(policy.rules) >= 3


# -- decisions ------------------------------------------------------------------

POLICY_RULES = parse_policy(POLICY, "test.toml")
API = POLICY_RULES.rule_for("spiffe://prod.example/ns/payments/sa/api")
NS = POLICY_RULES.rule_for("spiffe://prod.example/ns/payments/cron")


def decide(rule, **overrides):  # type: ignore[no-untyped-def]
    args = {
        "operator_scopes": frozenset(),
        "registered_scopes": None,
        "requested_scopes": None,
        "resources": [],
        "default_audience": "https://api.example",
        "lifetime": 300,
        "who": "test",
    }
    args.update(overrides)
    return combine(rule, **args)


def test_union_of_policy_and_operator_narrowed_by_registration() -> None:
    d = decide(API, operator_scopes=frozenset({"ops.extra"}))
    assert d.scopes == ("ops.extra", "payments.read", "payments.write")
    d = decide(
        API,
        operator_scopes=frozenset({"ops.extra"}),
        registered_scopes=frozenset({"payments.read", "ops.extra", "never"}),
    )
    assert d.scopes == ("ops.extra", "payments.read")
    with pytest.raises(InvalidScope):
        decide(
            API,
            registered_scopes=frozenset({"payments.read"}),
            requested_scopes=["payments.write"],
        )


def test_audiences_and_default() -> None:
    assert decide(NS).audience == ("https://payments.example",)
    assert decide(None).audience == ("https://api.example",)
    # The rule without a default of its own falls back to the global one.
    assert decide(API).audience == ("https://api.example",)
    assert decide(NS, resources=["https://ledger.example"]).audience == (
        "https://ledger.example",
    )
    with pytest.raises(InvalidTarget):
        decide(NS, resources=["https://api.example"])
    with pytest.raises(InvalidTarget):
        decide(None, resources=["https://payments.example"])


def test_lifetime_is_capped_by_the_global_lifetime() -> None:
    assert decide(API).max_lifetime == 60
    assert decide(NS).max_lifetime == 300
    assert decide(None).max_lifetime == 300


def test_no_rule_means_operator_grants_only() -> None:
    d = decide(None, operator_scopes=frozenset({"a"}))
    assert d.scopes == ("a",) and "no policy rule" in d.rule
    with pytest.raises(InvalidScope):
        decide(None, requested_scopes=["health"])


def test_explain_names_the_winner_and_the_losers() -> None:
    result = explain(
        POLICY_RULES,
        "spiffe://prod.example/ns/payments/sa/api",
        requested_scopes=["payments.write"],
        resources=["https://payments.example"],
        default_audience="https://api.example",
        lifetime=300,
    )
    text = "\n".join(result.lines())
    assert (
        "rule       'api' decides (exact spiffe://prod.example/ns/payments/sa/api)"
        in text
    )
    assert "'deep' (prefix spiffe://prod.example/ns/payments/sa/*, 3 segments)" in text
    assert "'ns' (prefix spiffe://prod.example/ns/payments/*, 2 segments)" in text
    assert "'td' (trust domain prod.example) matches too" in text
    assert "decision   ALLOW scope=payments.write aud=https://payments.example" in text
    refused = explain(
        POLICY_RULES,
        "spiffe://prod.example/ns/payments/sa/batch",
        requested_scopes=["payments.write"],
        resources=[],
        default_audience="https://api.example",
        lifetime=300,
    )
    assert not refused.allowed
    assert "decision   REFUSE invalid_scope:" in "\n".join(refused.lines())
    assert "policy rule 'deep'" in "\n".join(refused.lines())


# -- the commands -----------------------------------------------------------------


def test_policy_check_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.toml"
    good.write_bytes(POLICY)
    assert main(["policy", "check", str(good)]) == 0
    assert "OK, 4 rule(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "a"\nmatch = "spiffe://x/y"\nscope = []\n')
    assert main(["policy", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "rule 'a': unknown key 'scope'" in err
    assert main(["policy", "check", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read the file" in capsys.readouterr().err


def test_policy_explain_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import swim_as.cli

    # The command configures the root logger; keep pytest's handlers.
    monkeypatch.setattr(swim_as.cli, "_setup_logging", lambda *a, **k: None)
    monkeypatch.delenv("SWIM_AS_CONFIG", raising=False)
    path = tmp_path / "policy.toml"
    path.write_bytes(POLICY)
    status = main(
        [
            "policy",
            "explain",
            "spiffe://prod.example/ns/payments/sa/batch",
            "--scope",
            "payments.read payments.list",
            "--policy",
            str(path),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "'deep' decides" in out and "ALLOW scope=payments.read payments.list" in out
    status = main(
        [
            "policy",
            "explain",
            "spiffe://prod.example/ns/payments/sa/batch",
            "--resource",
            "https://elsewhere.example",
            "--policy",
            str(path),
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert status == 1
    assert data["decision"] == {
        "allowed": False,
        "error": "invalid_target",
        "reason": data["decision"]["reason"],
    }
    assert data["rule"]["name"] == "deep"
    assert [r["name"] for r in data["matched_but_less_specific"]] == ["ns", "td"]
    assert main(["policy", "explain", "spiffe://X/y", "--policy", str(path)]) == 2
    assert "invalid SPIFFE ID" in capsys.readouterr().err
