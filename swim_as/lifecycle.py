"""Wiring of the client lifecycle: policy, JIT, controlled registration, expiry.

:func:`build_lifecycle` makes the services from the settings (reading the
policy file and the software statement issuers' keys, which is fatal when
they are bad); :func:`start_lifecycle` starts the background tasks: the
policy file watcher, the last-seen writer and the idle-client job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from swim_as.clients.controlled import ControlledRegistration
from swim_as.clients.iat import InitialAccessTokens
from swim_as.clients.jit import JustInTime
from swim_as.clients.lifecycle import ExpiryJob, SeenTracker
from swim_as.clients.model import Client
from swim_as.clients.registration import RegistrationService
from swim_as.clients.statements import (
    StatementConfigError,
    StatementIssuer,
    StatementVerifier,
    load_issuer,
)
from swim_as.clock import Clock
from swim_as.grants.decision import AccessDecider, OperatorGrants
from swim_as.policy.engine import PolicyDecider
from swim_as.policy.rules import PolicyError, load_policy_file
from swim_as.policy.source import PolicyFile
from swim_as.settings import Settings
from swim_as.storage.clients import SqlClientRepository
from swim_as.storage.db import Database

# How often the policy file is checked for a change.
POLICY_POLL_SECONDS = 1.0
SEEN_TASK = "swim-as-seen"


@dataclass
class Lifecycle:
    """The lifecycle services of one process."""

    policy: PolicyFile | None
    decider: AccessDecider
    jit: JustInTime | None
    seen: SeenTracker
    expiry: ExpiryJob
    iats: InitialAccessTokens
    statements: StatementVerifier
    controlled: ControlledRegistration


def load_statement_issuers(settings: Settings) -> dict[str, StatementIssuer]:
    """The configured software statement issuers with their keys.

    Raises:
        StatementConfigError: a key file or pattern is unusable.
    """
    return {
        entry.issuer: load_issuer(
            entry.issuer, entry.jwks_file, list(entry.spiffe_id_patterns)
        )
        for entry in settings.software_statement_issuers
    }


def lifecycle_problem(settings: Settings) -> str | None:
    """Why the lifecycle configuration cannot serve, for ``swim-as serve``."""
    if settings.policy.file is not None:
        try:
            load_policy_file(settings.policy.file)
        except PolicyError as err:
            return str(err)
    try:
        load_statement_issuers(settings)
    except StatementConfigError as err:
        return str(err)
    return None


def build_lifecycle(
    settings: Settings,
    *,
    db: Database,
    clock: Clock,
    repository: SqlClientRepository,
    registration: RegistrationService,
    lookup: Callable[[str], Awaitable[Client | None]] | None = None,
) -> Lifecycle:
    """Construct the lifecycle services.

    Raises:
        PolicyError: the policy file is bad.
        StatementConfigError: a software statement issuer is unusable.
    """
    tokens = settings.tokens
    policy: PolicyFile | None = None
    decider: AccessDecider
    jit: JustInTime | None = None
    if settings.policy.file is not None:
        policy = PolicyFile(settings.policy.file, db, clock)
        policy.load_initial()
        current = policy
        decider = PolicyDecider(
            lambda: current.current,
            default_audience=tokens.default_audience,
            lifetime=tokens.lifetime_seconds,
        )
        jit = JustInTime(
            lambda: current.current, registration, lookup or repository.get
        )
    else:
        decider = OperatorGrants(tokens.default_audience, tokens.lifetime_seconds)

    def self_registration_refusal(caller: str) -> str | None:
        if not settings.registration.self_registration:
            return "registration.self_registration is false"
        if policy is None:
            return None
        rule = policy.current.rule_for(caller)
        if rule is None:
            return "no policy rule matches"
        if not rule.self_register:
            return f"policy rule {rule.name!r} does not allow self_register"
        return None

    seen = SeenTracker(db, repository, clock)
    life = settings.lifecycle
    expiry = ExpiryJob(
        db,
        repository,
        clock,
        disable_after=life.disable_after_seconds,
        delete_after=life.delete_after_seconds,
        before=seen.flush,
    )
    iats = InitialAccessTokens(db, clock)
    statements = StatementVerifier(
        load_statement_issuers(settings), audience=settings.issuer, clock=clock
    )
    return Lifecycle(
        policy=policy,
        decider=decider,
        jit=jit,
        seen=seen,
        expiry=expiry,
        iats=iats,
        statements=statements,
        controlled=ControlledRegistration(
            registration,
            iats,
            statements,
            self_registration_refusal=self_registration_refusal,
        ),
    )


async def start_lifecycle(
    lifecycle: Lifecycle, settings: Settings, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """Audit the policy in force and start the background tasks."""
    tasks = [
        asyncio.create_task(
            lifecycle.seen.run(stop, settings.lifecycle.seen_flush_seconds),
            name=SEEN_TASK,
        )
    ]
    if lifecycle.policy is not None:
        await lifecycle.policy.record_loaded()
        tasks.append(
            asyncio.create_task(
                lifecycle.policy.watch(stop, POLICY_POLL_SECONDS),
                name="swim-as-policy",
            )
        )
    if lifecycle.expiry.enabled:
        tasks.append(
            asyncio.create_task(
                lifecycle.expiry.run(stop, settings.lifecycle.check_every_seconds),
                name="swim-as-expiry",
            )
        )
    return tasks
