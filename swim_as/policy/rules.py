"""Policy rules, the TOML file they are written in, and matching (D8).

A policy is a list of ``[[rule]]`` tables. Each rule matches SPIFFE IDs in
one of three ways, written in its ``match`` key:

* exactly: ``spiffe://prod.example/ns/payments/sa/api``;
* by whole-segment prefix: ``spiffe://prod.example/ns/payments/*`` matches
  every ID below ``/ns/payments`` (OAuth SPIFFE client-auth draft §5.1,
  D4), never ``/ns/payments`` itself nor ``/ns/payments-old``;
* by trust domain: ``spiffe://prod.example/*`` matches every workload of
  the trust domain.

The most specific matching rule decides alone: exact, then the longer
prefix, then the shorter, then the trust domain. Rules are not merged. Two
rules with the same ``match`` are equally specific for the same IDs and
are refused when the file is loaded, as is anything else the loader does
not understand; every error names its rule.

:class:`Policy` is the compiled form the token endpoint asks: exact rules in
one dictionary, prefix rules in another keyed by prefix, and a bounded
cache of the answer per SPIFFE ID. A new policy is a new object with an
empty cache, so a reload never serves an old answer.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from swim_as.spiffe.errors import SpiffeIdError
from swim_as.spiffe.ids import SCHEME, SpiffeIdPattern

Kind = Literal["exact", "prefix", "trust_domain"]

RULE_KEYS = frozenset(
    {
        "name",
        "description",
        "match",
        "scopes",
        "audiences",
        "default_audience",
        "max_lifetime_seconds",
        "self_register",
        "jit",
    }
)
TOP_LEVEL_KEYS = frozenset({"rule"})
MIN_LIFETIME, MAX_LIFETIME = 10, 86400
# Answers remembered per SPIFFE ID; a workload fleet larger than this only
# costs a few dictionary lookups per token request.
CACHE_SIZE = 65_536

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
_URI_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


class PolicyError(ValueError):
    """A policy file that cannot be used; ``errors`` lists every problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(
            f"policy {source} is invalid:\n" + "\n".join(f"  - {e}" for e in errors)
        )


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rule]]`` as loaded; ``index`` is its position (1-based)."""

    name: str
    index: int
    match: str
    kind: Kind
    # exact: the SPIFFE ID; prefix and trust domain: the ID before "/*".
    key: str
    segments: int
    scopes: frozenset[str]
    audiences: tuple[str, ...]
    default_audience: str | None
    max_lifetime: int | None
    self_register: bool
    jit: bool
    description: str = ""

    @property
    def specificity(self) -> tuple[int, int]:
        """Exact beats any prefix; a longer prefix beats a shorter one."""
        return (2, 0) if self.kind == "exact" else (1, self.segments)

    def describe(self) -> str:
        """How the rule matches, in words."""
        if self.kind == "exact":
            return f"exact {self.match}"
        if self.kind == "trust_domain":
            return f"trust domain {self.key[len(SCHEME) :]}"
        noun = "segment" if self.segments == 1 else "segments"
        return f"prefix {self.match}, {self.segments} {noun}"


@dataclass
class Policy:
    """A loaded policy, compiled for lookups by SPIFFE ID."""

    rules: tuple[Rule, ...]
    source: str
    sha256: str
    _exact: dict[str, Rule] = field(default_factory=dict, repr=False)
    _prefix: dict[str, Rule] = field(default_factory=dict, repr=False)
    _cache: OrderedDict[str, Rule | None] = field(
        default_factory=OrderedDict, repr=False
    )

    def __post_init__(self) -> None:
        for rule in self.rules:
            table = self._exact if rule.kind == "exact" else self._prefix
            table[rule.key] = rule

    def rule_for(self, spiffe_id: str) -> Rule | None:
        """The rule that decides for a verified SPIFFE ID, or None (deny)."""
        cached = self._cache.get(spiffe_id, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        found = self._exact.get(spiffe_id)
        if found is None:
            for prefix in _proper_prefixes(spiffe_id):
                found = self._prefix.get(prefix)
                if found is not None:
                    break
        self._cache[spiffe_id] = found
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return found

    def matching(self, spiffe_id: str) -> list[Rule]:
        """Every rule that matches, the deciding one first."""
        found = []
        exact = self._exact.get(spiffe_id)
        if exact is not None:
            found.append(exact)
        for prefix in _proper_prefixes(spiffe_id):
            rule = self._prefix.get(prefix)
            if rule is not None:
                found.append(rule)
        return found


_MISSING = object()


def _proper_prefixes(spiffe_id: str) -> list[str]:
    """``spiffe://td/a/b`` → ``spiffe://td/a``, ``spiffe://td`` (longest first).

    The ID is canonical (verified), so every ``/`` after the scheme is a
    segment boundary.
    """
    prefixes: list[str] = []
    end = len(spiffe_id)
    while True:
        end = spiffe_id.rfind("/", len(SCHEME), end)
        if end < 0:
            return prefixes
        prefixes.append(spiffe_id[:end])


def empty_policy(source: str = "(none)") -> Policy:
    return Policy((), source, hashlib.sha256(b"").hexdigest())


def load_policy_file(path: Path) -> Policy:
    """Read and compile a policy file.

    Raises:
        PolicyError: the file cannot be read or breaks a rule.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PolicyError(str(path), [f"cannot read the file: {err.strerror}"]) from err
    return parse_policy(data, str(path))


def parse_policy(data: bytes, source: str) -> Policy:
    """Compile the bytes of a policy file; every problem is reported at once.

    Raises:
        PolicyError: syntax errors, unknown keys, malformed patterns or
            URIs, values of the wrong type, duplicate names, and rules
            that are equally specific for the same IDs.
    """
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PolicyError(source, [f"not UTF-8 text: {err.reason}"]) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(source, [f"TOML syntax error: {err}"]) from None
    errors: list[str] = []
    for key in sorted(set(document) - TOP_LEVEL_KEYS):
        errors.append(f"unknown top-level key {key!r} (rules are [[rule]] tables)")
    raw_rules = document.get("rule", [])
    if not isinstance(raw_rules, list):
        errors.append("'rule' must be an array of tables: write [[rule]]")
        raw_rules = []
    rules: list[Rule] = []
    names: dict[str, int] = {}
    # Prefixes of equal length that differ match disjoint sets of IDs, so
    # two rules tie for some ID exactly when they match the same way. Ties
    # are looked for among all rules whose match parses, so that one run
    # reports every problem.
    claimed: dict[tuple[Kind, str], str] = {}
    for index, raw in enumerate(raw_rules, start=1):
        rule, label, matched = _parse_rule(raw, index, errors)
        if matched is not None:
            kind, key, _ = matched
            other = claimed.get((kind, key))
            if other is not None:
                errors.append(
                    f"{other} and {label} both match {raw['match']} and are "
                    "equally specific; merge them or make one more specific"
                )
            else:
                claimed[(kind, key)] = label
        if rule is None:
            continue
        if rule.name in names:
            errors.append(
                f"rule {rule.name!r} (#{index}): the name is already used by "
                f"rule #{names[rule.name]}"
            )
            continue
        names[rule.name] = index
        rules.append(rule)
    if errors:
        raise PolicyError(source, errors)
    return Policy(tuple(rules), source, digest)


def _parse_rule(
    raw: object, index: int, errors: list[str]
) -> tuple[Rule | None, str, tuple[Kind, str, int] | None]:
    """One rule, its label for messages, and how it matches (if it parses)."""
    if not isinstance(raw, dict):
        errors.append(f"rule #{index}: must be a table ([[rule]])")
        return None, f"rule #{index}", None
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        label = f"rule #{index}"
        errors.append(
            f"{label}: 'name' is required: 1-100 characters of letters, digits, "
            "'.', '_', ':' or '-', starting with a letter or digit"
        )
        name = None
    else:
        label = f"rule {name!r}"
    problems: list[str] = []
    for key in sorted(set(raw) - RULE_KEYS):
        problems.append(
            f"unknown key {key!r} (expected one of: {', '.join(sorted(RULE_KEYS))})"
        )
    matched = _match(raw.get("match"), problems)
    scopes = _scopes(raw.get("scopes", []), problems)
    audiences = _uri_list(raw.get("audiences", []), "audiences", problems)
    default_audience = raw.get("default_audience")
    if default_audience is not None and not _uri(
        default_audience, "default_audience", problems
    ):
        default_audience = None
    lifetime = raw.get("max_lifetime_seconds")
    if lifetime is not None and (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int)
        or not MIN_LIFETIME <= lifetime <= MAX_LIFETIME
    ):
        problems.append(
            f"max_lifetime_seconds must be an integer from {MIN_LIFETIME} to "
            f"{MAX_LIFETIME}"
        )
    flags = {}
    for flag in ("self_register", "jit"):
        value = raw.get(flag, False)
        if not isinstance(value, bool):
            problems.append(f"{flag} must be true or false")
        flags[flag] = value is True
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.append("description must be a string")
        description = ""
    errors.extend(f"{label}: {p}" for p in problems)
    if problems or name is None or matched is None:
        return None, label, matched
    kind, key, segments = matched
    rule = Rule(
        name=name,
        index=index,
        match=raw["match"],
        kind=kind,
        key=key,
        segments=segments,
        scopes=frozenset(scopes),
        audiences=tuple(dict.fromkeys(audiences)),
        default_audience=default_audience,
        max_lifetime=lifetime,
        self_register=flags["self_register"],
        jit=flags["jit"],
        description=description,
    )
    return rule, label, matched


def _match(value: object, problems: list[str]) -> tuple[Kind, str, int] | None:
    if value is None:
        problems.append("'match' is required (a SPIFFE ID or a pattern ending in /*)")
        return None
    if not isinstance(value, str):
        problems.append("match must be a string")
        return None
    try:
        pattern = SpiffeIdPattern.parse(value)
    except SpiffeIdError as err:
        problems.append(f"match: {err}")
        return None
    if not pattern.is_wildcard:
        if pattern.spiffe_id_is_root:
            problems.append(
                f"match: {value!r} is a trust domain's own ID and matches no "
                f"workload; write '{value}/*' to match all of its workloads"
            )
            return None
        return "exact", value, 0
    prefix = str(pattern.spiffe_id)
    path = pattern.spiffe_id.path
    segments = path.count("/")
    return ("prefix" if segments else "trust_domain"), prefix, segments


def _scopes(value: object, problems: list[str]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        problems.append("scopes must be a list of strings")
        return []
    bad = [s for s in value if not is_scope_token(s)]
    if bad:
        problems.append(f"scopes: {bad[0]!r} is not a scope (RFC 6749 §3.3)")
        return []
    return value


def _uri_list(value: object, key: str, problems: list[str]) -> list[str]:
    if not isinstance(value, list):
        problems.append(f"{key} must be a list of absolute URIs")
        return []
    return [v for v in value if _uri(v, key, problems)]


def _uri(value: object, key: str, problems: list[str]) -> bool:
    """RFC 8707 §2: an absolute URI without a fragment."""
    if not isinstance(value, str):
        problems.append(f"{key}: expected a URI string, got {type(value).__name__}")
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if (
        parts is None
        or not _URI_SCHEME_RE.fullmatch(parts.scheme or "")
        or not (parts.netloc or parts.path)
        or any(c.isspace() for c in value)
        or not value.isprintable()
    ):
        problems.append(f"{key}: {value!r} is not an absolute URI")
        return False
    if "#" in value:
        problems.append(f"{key}: {value!r} has a fragment (RFC 8707 §2)")
        return False
    return True


def is_scope_token(token: str) -> bool:
    """RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )."""
    return bool(token) and all(
        c == "\x21" or "\x23" <= c <= "\x5b" or "\x5d" <= c <= "\x7e" for c in token
    )


def rule_summary(rule: Rule) -> Mapping[str, Any]:
    """A rule as plain data (for ``policy explain --json``)."""
    return {
        "name": rule.name,
        "match": rule.match,
        "how": rule.describe(),
        "scopes": sorted(rule.scopes),
        "audiences": list(rule.audiences),
        "default_audience": rule.default_audience,
        "max_lifetime_seconds": rule.max_lifetime,
        "self_register": rule.self_register,
        "jit": rule.jit,
    }
