"""The lifecycle commands of ``swim-as``: policy and initial access tokens.

    swim-as policy check FILE
    swim-as policy explain SPIFFE_ID [--scope S] [--resource URI]
                                     [--config FILE | --policy FILE] [--json]
    swim-as iat create --pattern P [--scope S] [--expires-in 1h] [--json]
    swim-as iat list [--json]
    swim-as iat revoke ID

``policy check`` exits 0 for a good file and 1 with every problem for a
bad one. ``policy explain`` exits 0 when the request would get a token and
1 when it would be refused; both print why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from swim_as import cli
from swim_as.cli import CliError, _settings

ConfigAdder = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]

_DURATION_RE = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d``.

    Raises:
        CliError: anything else.
    """
    found = _DURATION_RE.fullmatch(text.strip())
    if found is None:
        raise CliError(f"not a duration: {text!r} (examples: 90s, 15m, 1h, 7d)")
    return timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when no offset is given), or a duration ago.

    Raises:
        CliError: neither.
    """
    if _DURATION_RE.fullmatch(text.strip()):
        return (now or datetime.now(UTC)) - parse_duration(text)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"not a time: {text!r} (ISO 8601 such as 2026-12-04T10:00:00Z, "
            "or a duration ago such as 2h)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _actor() -> str:
    from swim_as.cli import operator_name

    return operator_name()


def _words(values: Sequence[str] | None) -> list[str] | None:
    """Repeated options whose values may themselves hold several words."""
    if values is None:
        return None
    return [w for value in values for w in value.split()]


# -- policy ---------------------------------------------------------------------


def cmd_policy_check(args: argparse.Namespace) -> int:
    from swim_as.policy.rules import PolicyError, load_policy_file

    try:
        policy = load_policy_file(Path(args.file))
    except PolicyError as err:
        print(f"swim-as: {err}", file=sys.stderr)
        return 1
    print(f"{args.file}: OK, {len(policy.rules)} rule(s)")
    for rule in sorted(policy.rules, key=lambda r: r.specificity, reverse=True):
        flags = [f for f in ("self_register", "jit") if getattr(rule, f)]
        print(
            f"  {rule.name}: {rule.describe()}"
            + (f" [{', '.join(flags)}]" if flags else "")
        )
    return 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from swim_as.policy.engine import explain
    from swim_as.policy.rules import PolicyError, load_policy_file
    from swim_as.spiffe.errors import SpiffeIdError
    from swim_as.spiffe.ids import SpiffeId

    settings = None
    if args.config or os.environ.get("SWIM_AS_CONFIG"):
        settings = _settings(args)
    cli._setup_logging(settings, "text")
    path = args.policy or (settings.policy.file if settings else None)
    if path is None:
        raise CliError(
            "no policy file: pass --policy FILE, or --config FILE with [policy] file"
        )
    try:
        spiffe_id = SpiffeId.parse(args.spiffe_id)
    except SpiffeIdError as err:
        raise CliError(str(err)) from err
    if spiffe_id.is_root:
        raise CliError(f"{args.spiffe_id} names a trust domain, not a workload")
    try:
        policy = load_policy_file(Path(path))
    except PolicyError as err:
        raise CliError(str(err)) from err

    notes = []
    client = None
    looked_up = False
    if settings is not None:
        default_audience = settings.tokens.default_audience
        lifetime = settings.tokens.lifetime_seconds
        try:
            client = asyncio.run(_lookup_client(settings.database.url, str(spiffe_id)))
            looked_up = True
        except Exception as err:
            notes.append(f"the client could not be looked up: {type(err).__name__}")
    else:
        default_audience = "<tokens.default_audience>"
        lifetime = 300
        notes.append(
            "without --config the global default audience and lifetime are not "
            "known (lifetime assumed 300 s)"
        )
    result = explain(
        policy,
        str(spiffe_id),
        requested_scopes=_words(args.scope),
        resources=args.resource or [],
        default_audience=default_audience,
        lifetime=lifetime,
        client=client,
        client_looked_up=looked_up,
    )
    result.notes.extend(notes)
    if args.json:
        print(json.dumps(result.as_json(), ensure_ascii=False))
    else:
        print("\n".join(result.lines()))
    return 0 if result.allowed else 1


async def _lookup_client(url: str, client_id: str) -> Any:
    from swim_as.storage.clients import SqlClientRepository
    from swim_as.storage.db import Database

    db = Database(url)
    try:
        return await asyncio.wait_for(SqlClientRepository(db).get(client_id), 10)
    finally:
        await db.close()


# -- initial access tokens ------------------------------------------------------


def cmd_iat(args: argparse.Namespace) -> int:
    settings = _settings(args)
    cli._setup_logging(settings, "text")

    async def work() -> int:
        from swim_as.clients.iat import IatNotFound, InitialAccessTokens
        from swim_as.clock import SystemClock
        from swim_as.storage.db import Database

        db = Database(settings.database.url)
        iats = InitialAccessTokens(db, SystemClock())
        try:
            if args.action == "create":
                try:
                    token, record = await iats.create(
                        patterns=args.pattern,
                        scopes=_words(args.scope) or [],
                        expires_in=parse_duration(args.expires_in),
                        actor=_actor(),
                        description=args.description,
                    )
                except ValueError as err:
                    raise CliError(str(err)) from err
                _print_created(token, record, as_json=args.json)
            elif args.action == "list":
                now = datetime.now(UTC)
                for record in await iats.list():
                    _print_record(record, now, as_json=args.json)
            elif args.action == "revoke":
                try:
                    record = await iats.revoke(args.id, actor=_actor())
                except IatNotFound as err:
                    raise CliError(f"no such initial access token: {args.id}") from err
                print(f"revoked: {record.id}")
        finally:
            await db.close()
        return 0

    return asyncio.run(work())


def _record_json(record: Any, now: datetime) -> dict[str, Any]:
    return {
        "id": record.id,
        "state": record.state(now),
        "patterns": [str(p) for p in record.patterns],
        "scopes": sorted(record.scopes),
        "description": record.description,
        "created_at": record.created_at.isoformat(),
        "created_by": record.created_by,
        "expires_at": record.expires_at.isoformat(),
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "uses": record.uses,
        "last_used_at": record.last_used_at.isoformat()
        if record.last_used_at
        else None,
    }


def _print_created(token: str, record: Any, *, as_json: bool) -> None:
    if as_json:
        data = _record_json(record, record.created_at)
        print(json.dumps({**data, "token": token}, ensure_ascii=False))
        return
    print(f"created initial access token {record.id}")
    print(f"  patterns:   {' '.join(str(p) for p in record.patterns)}")
    print(f"  scopes:     {' '.join(sorted(record.scopes)) or '(none)'}")
    print(f"  expires at: {record.expires_at.isoformat(timespec='seconds')}")
    print("token (shown once; swim-as keeps only its hash):")
    print(token)


def _print_record(record: Any, now: datetime, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_record_json(record, now), ensure_ascii=False))
        return
    print(
        f"{record.id}\t{record.state(now)}\t"
        f"expires {record.expires_at.isoformat(timespec='seconds')}\t"
        f"uses {record.uses}\t"
        f"{' '.join(str(p) for p in record.patterns)}\t"
        f"scopes: {' '.join(sorted(record.scopes)) or '-'}"
        + (f"\t{record.description}" if record.description else "")
    )


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    with_config: ConfigAdder,
) -> None:
    """Add ``policy`` and ``iat`` to the ``swim-as`` parser."""
    policy = sub.add_parser("policy", help="check and explain the policy file")
    policy_actions = policy.add_subparsers(dest="action", required=True)
    check = policy_actions.add_parser(
        "check", help="validate a policy file (exit 1 with the errors)"
    )
    check.add_argument("file")
    check.set_defaults(func=cmd_policy_check)
    explain = with_config(
        policy_actions.add_parser(
            "explain", help="the decision for a SPIFFE ID, the rule and why"
        )
    )
    explain.add_argument("spiffe_id")
    explain.add_argument("--scope", action="append", help="requested scope(s)")
    explain.add_argument(
        "--resource", action="append", help="requested resource (repeatable)"
    )
    explain.add_argument(
        "--policy", metavar="FILE", help="policy file (default: [policy] file)"
    )
    explain.add_argument("--json", action="store_true", help="one JSON object")
    explain.set_defaults(func=cmd_policy_explain)

    iat = sub.add_parser(
        "iat", help="initial access tokens for controlled registration (RFC 7591 §3)"
    )
    iat_actions = iat.add_subparsers(dest="action", required=True)
    create = with_config(iat_actions.add_parser("create", help="create a token"))
    create.add_argument(
        "--pattern",
        action="append",
        required=True,
        help="SPIFFE ID or pattern ending in /* it may register (repeatable)",
    )
    create.add_argument(
        "--scope", action="append", help="scope(s) registered clients are granted"
    )
    create.add_argument(
        "--expires-in", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)"
    )
    create.add_argument("--description", help="what it is for")
    create.add_argument("--json", action="store_true", help="one JSON object")
    listing = with_config(iat_actions.add_parser("list", help="list tokens"))
    listing.add_argument("--json", action="store_true", help="JSON lines")
    revoke = with_config(iat_actions.add_parser("revoke", help="revoke a token"))
    revoke.add_argument("id")
    iat.set_defaults(func=cmd_iat)
