"""Decisions with a policy: what a token may carry, and why (D8, D13).

The token endpoint asks :class:`PolicyDecider` (an
:class:`~swim_as.grants.decision.AccessDecider`); ``swim-as policy explain``
asks :func:`explain`. Both go through :func:`combine`, so the explanation
is the decision the token endpoint makes, not a second implementation.

How the sources combine, for a client authenticated as SPIFFE ID ``S``:

* rule = the most specific rule matching ``S`` (none: the policy grants
  nothing);
* allowed scopes = (rule scopes ∪ operator-granted scopes) ∩ the client's
  registered ``scope`` when it registered one (it only narrows, D13);
  asking for a scope outside them is ``invalid_scope`` (RFC 6749 §5.2),
  asking for none gets all of them (RFC 6749 §3.3);
* default audience = the rule's ``default_audience``, else
  ``tokens.default_audience``; allowed audiences = the rule's
  ``audiences`` plus that default; a ``resource`` outside them is
  ``invalid_target`` (RFC 8707 §2); without ``resource`` the token's
  ``aud`` is the default audience;
* lifetime = the rule's ``max_lifetime_seconds``, never more than
  ``tokens.lifetime_seconds`` (signing keys are kept published for that
  long, D7).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from swim_as.clients.model import Client
from swim_as.errors import InvalidClient, InvalidScope, InvalidTarget, OAuthError
from swim_as.grants.decision import Decision
from swim_as.policy.rules import Policy, Rule, rule_summary

NO_RULE = "no policy rule matched (operator grants only)"


def rule_label(rule: Rule | None) -> str:
    return f"policy rule {rule.name!r}" if rule is not None else NO_RULE


def combine(
    rule: Rule | None,
    *,
    operator_scopes: frozenset[str],
    registered_scopes: frozenset[str] | None,
    requested_scopes: Sequence[str] | None,
    resources: Sequence[str],
    default_audience: str,
    lifetime: int,
    who: str,
) -> Decision:
    """The decision for one token request (module docstring).

    Raises:
        InvalidScope: a requested scope is not allowed.
        InvalidTarget: a requested resource is not allowed.
    """
    allowed = (rule.scopes if rule is not None else frozenset()) | operator_scopes
    if registered_scopes is not None:
        allowed &= registered_scopes
    if requested_scopes is None:
        scopes = tuple(sorted(allowed))
    else:
        refused = [s for s in requested_scopes if s not in allowed]
        if refused:
            raise InvalidScope(
                "requested scope is not allowed",
                detail=(
                    f"{who}: scopes {refused} not allowed by {rule_label(rule)}; "
                    f"allowed: {sorted(allowed)}"
                    + (
                        f" (registered scope narrows to {sorted(registered_scopes)})"
                        if registered_scopes is not None
                        else ""
                    )
                ),
            )
        scopes = tuple(dict.fromkeys(requested_scopes))

    default = (
        rule.default_audience
        if rule is not None and rule.default_audience
        else default_audience
    )
    audiences = set(rule.audiences) if rule is not None else set()
    audiences.add(default)
    refused_targets = [r for r in resources if r not in audiences]
    if refused_targets:
        raise InvalidTarget(
            "requested resource is not allowed",
            detail=(
                f"{who}: resources {refused_targets} not allowed by "
                f"{rule_label(rule)}; allowed: {sorted(audiences)}"
            ),
        )
    audience = tuple(dict.fromkeys(resources)) or (default,)

    limit = lifetime
    if rule is not None and rule.max_lifetime is not None:
        limit = min(rule.max_lifetime, lifetime)
    return Decision(
        scopes=scopes, audience=audience, max_lifetime=limit, rule=rule_label(rule)
    )


class PolicyDecider:
    """The token endpoint's decider when a policy file is configured."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        *,
        default_audience: str,
        lifetime: int,
    ) -> None:
        self._policy = policy
        self._default_audience = default_audience
        self._lifetime = lifetime

    def decide(
        self,
        client: Client,
        spiffe_id: str | None,
        scopes: Sequence[str] | None,
        resources: Sequence[str],
    ) -> Decision:
        rule = self._policy().rule_for(spiffe_id) if spiffe_id is not None else None
        return combine(
            rule,
            operator_scopes=client.granted_scopes,
            registered_scopes=client.registered_scopes,
            requested_scopes=scopes,
            resources=resources,
            default_audience=self._default_audience,
            lifetime=self._lifetime,
            who=client.client_id,
        )


@dataclass
class Explanation:
    """What ``swim-as policy explain`` prints: the decision and its reasons."""

    spiffe_id: str
    rule: Rule | None
    lost: list[Rule]
    client: Client | None
    client_looked_up: bool
    requested_scopes: Sequence[str] | None
    resources: Sequence[str]
    default_audience: str
    lifetime: int
    decision: Decision | None = None
    refusal: OAuthError | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.decision is not None

    def lines(self) -> list[str]:
        """The explanation as text, one statement per line."""
        out = [f"SPIFFE ID  {self.spiffe_id}"]
        if self.rule is None:
            out.append("rule       none matches: the policy grants nothing (deny)")
        else:
            how = self.rule.describe()
            out.append(f"rule       {self.rule.name!r} decides ({how})")
            if self.rule.description:
                out.append(f"           {self.rule.description}")
            out.append(
                "           scopes: " + (" ".join(sorted(self.rule.scopes)) or "(none)")
            )
            out.append(
                "           audiences: "
                + (" ".join(self.rule.audiences) or "(none)")
                + f"; default: {self.rule.default_audience or '(global default)'}"
            )
            out.append(
                "           max lifetime: "
                + (
                    f"{self.rule.max_lifetime} s"
                    if self.rule.max_lifetime
                    else "(global)"
                )
                + f"; self_register: {_yes(self.rule.self_register)}"
                + f"; jit: {_yes(self.rule.jit)}"
            )
        for loser in self.lost:
            out.append(
                f"also       {loser.name!r} ({loser.describe()}) matches too, but "
                "is less specific: not used"
            )
        out.append(self._client_line())
        scope_text = (
            " ".join(self.requested_scopes)
            if self.requested_scopes is not None
            else "(none: all allowed scopes)"
        )
        resource_text = " ".join(self.resources) or "(none: the default audience)"
        out.append(f"request    scope={scope_text} resource={resource_text}")
        if self.decision is not None:
            d = self.decision
            out.append(
                f"decision   ALLOW scope={' '.join(d.scopes) or '(none)'} "
                f"aud={' '.join(d.audience)} lifetime<={d.max_lifetime}s"
            )
        elif self.refusal is not None:
            out.append(f"decision   REFUSE {self.refusal.error}: {self.refusal.detail}")
        out.extend(f"note       {n}" for n in self.notes)
        return out

    def _client_line(self) -> str:
        if not self.client_looked_up:
            return (
                "client     not looked up (pass --config to include operator "
                "grants and the registered scope)"
            )
        if self.client is None:
            if self.rule is not None and self.rule.jit:
                return (
                    "client     not registered; the first token request creates it "
                    f"just in time (rule {self.rule.name!r} allows jit)"
                )
            return (
                "client     not registered and no jit: a token request gets "
                "invalid_client"
            )
        c = self.client
        registered = c.registered_scopes
        return (
            f"client     {c.client_id} ({c.auth_method}"
            + (", DISABLED: a token request gets invalid_client" if c.disabled else "")
            + f"); operator grants: {' '.join(sorted(c.granted_scopes)) or '(none)'}"
            + "; registered scope: "
            + (" ".join(sorted(registered)) if registered is not None else "(none)")
        )

    def as_json(self) -> dict[str, Any]:
        client = self.client
        return {
            "spiffe_id": self.spiffe_id,
            "rule": rule_summary(self.rule) if self.rule is not None else None,
            "matched_but_less_specific": [rule_summary(r) for r in self.lost],
            "client": (
                None
                if client is None
                else {
                    "client_id": client.client_id,
                    "disabled": client.disabled,
                    "granted_scopes": sorted(client.granted_scopes),
                    "registered_scope": sorted(client.registered_scopes)
                    if client.registered_scopes is not None
                    else None,
                }
            ),
            "client_looked_up": self.client_looked_up,
            "request": {
                "scope": list(self.requested_scopes)
                if self.requested_scopes is not None
                else None,
                "resource": list(self.resources),
            },
            "decision": (
                {
                    "allowed": True,
                    "scope": list(self.decision.scopes),
                    "aud": list(self.decision.audience),
                    "max_lifetime_seconds": self.decision.max_lifetime,
                    "rule": self.decision.rule,
                }
                if self.decision is not None
                else {
                    "allowed": False,
                    "error": self.refusal.error if self.refusal else None,
                    "reason": self.refusal.detail if self.refusal else None,
                }
            ),
            "notes": self.notes,
        }


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def explain(
    policy: Policy,
    spiffe_id: str,
    *,
    requested_scopes: Sequence[str] | None,
    resources: Sequence[str],
    default_audience: str,
    lifetime: int,
    client: Client | None = None,
    client_looked_up: bool = False,
) -> Explanation:
    """Explain the decision for ``spiffe_id`` (already a valid SPIFFE ID)."""
    matched = policy.matching(spiffe_id)
    rule = matched[0] if matched else None
    result = Explanation(
        spiffe_id=spiffe_id,
        rule=rule,
        lost=matched[1:],
        client=client,
        client_looked_up=client_looked_up,
        requested_scopes=requested_scopes,
        resources=resources,
        default_audience=default_audience,
        lifetime=lifetime,
    )
    if client_looked_up and (client is None and not (rule and rule.jit)):
        result.refusal = _unknown_client(spiffe_id)
        return result
    if not client_looked_up and not (rule and rule.jit):
        result.notes.append(
            "no rule allows jit: a token needs a client registered for this ID"
        )
    if client is not None and client.disabled:
        result.refusal = _unknown_client(spiffe_id, disabled=True)
        return result
    try:
        result.decision = combine(
            rule,
            operator_scopes=client.granted_scopes if client else frozenset(),
            registered_scopes=client.registered_scopes if client else None,
            requested_scopes=requested_scopes,
            resources=resources,
            default_audience=default_audience,
            lifetime=lifetime,
            who=spiffe_id,
        )
    except OAuthError as err:
        result.refusal = err
    if rule is not None and rule.max_lifetime and rule.max_lifetime > lifetime:
        result.notes.append(
            f"the rule's max_lifetime_seconds {rule.max_lifetime} is capped by "
            f"tokens.lifetime_seconds {lifetime}"
        )
    return result


def _unknown_client(spiffe_id: str, *, disabled: bool = False) -> OAuthError:
    if disabled:
        return InvalidClient(detail=f"client {spiffe_id!r} is disabled")
    return InvalidClient(
        detail=f"no client registered for {spiffe_id!r} and no rule allows jit"
    )
