"""The ``swim-as`` command.

    swim-as dev                      everything on this machine, no configuration
    swim-as serve    --config FILE   the server
    swim-as migrate  --config FILE   create or upgrade the database schema
    swim-as clients  add|add-key-client|add-secret-client|list|show|grant|
                     revoke|disable|enable|delete
    swim-as keys     list|rotate
    swim-as policy   check FILE | explain SPIFFE_ID   (swim_as.cli_lifecycle)
    swim-as iat      create|list|revoke               (swim_as.cli_lifecycle)
    swim-as audit    [--client ID] [--event NAME] [--actor A] [--since T]
                     [--until T] [--limit N] [--json]

Settings are read once, here, from ``--config`` and ``SWIM_AS_*`` variables,
and passed down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pwd
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from swim_as.settings import Settings, load_settings

log = logging.getLogger("swim_as.cli")


class CliError(Exception):
    """A problem the user can fix; printed without a trace, exit status 2."""


def _settings(args: argparse.Namespace) -> Settings:
    path = (
        getattr(args, "config", None)
        or getattr(args, "global_config", None)
        or os.environ.get("SWIM_AS_CONFIG")
    )
    if not path and not any(k.startswith("SWIM_AS_") for k in os.environ):
        raise CliError("no configuration: pass --config FILE or set SWIM_AS_CONFIG")
    config = Path(path).resolve() if path else None
    if config is not None and not config.is_file():
        what = "is a directory" if config.is_dir() else "does not exist"
        raise CliError(f"configuration file {config} {what}")
    try:
        return load_settings(config)
    except OSError as err:
        raise CliError(f"cannot read {config}: {err.strerror}") from err
    except ValidationError as err:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
            for e in err.errors()
        ]
        raise CliError("invalid configuration:\n" + "\n".join(lines)) from err
    except ValueError as err:  # tomllib.TOMLDecodeError is a ValueError
        raise CliError(f"invalid configuration: {err}") from err


def _setup_logging(settings: Settings | None, fmt: str | None = None) -> None:
    from swim_as.observability.logs import configure_logging

    level = settings.logging.level if settings else "INFO"
    configure_logging(level, fmt or (settings.logging.format if settings else "text"))


def cmd_migrate(args: argparse.Namespace) -> int:
    from swim_as.storage.migrate import upgrade
    from swim_as.storage.schema import schema_revision

    settings = _settings(args)
    _setup_logging(settings, "text")
    try:
        before = asyncio.run(schema_revision(settings.database.url))
        upgrade(settings.database.url)
        after = asyncio.run(schema_revision(settings.database.url))
    except (OSError, DBAPIError) as err:
        raise CliError(f"cannot open the database: {_db_reason(err)}") from err
    if before == after:
        print(f"database schema is up to date (revision {after})")
    else:
        print(f"database schema migrated: {before or 'empty'} -> {after}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from swim_as.process import serve
    from swim_as.serving_cert import ServingCertificateError

    settings = _settings(args)
    _setup_logging(settings)
    _check_runnable(settings)
    try:
        serve(settings)
    except ServingCertificateError as err:
        raise CliError(str(err)) from err
    return 0


def _check_runnable(settings: Settings) -> None:
    """Refuse to start, in one line, on what would crash every worker."""
    from swim_as.preflight import (
        PreflightError,
        check_bundles,
        check_kek,
        check_keys,
        check_tls,
    )

    problems = settings.serving_problems()
    if problems:
        raise CliError("cannot serve:\n" + "\n".join(f"  {p}" for p in problems))
    try:
        check_tls(settings)
        check_bundles(settings)
        kek = check_kek(settings)
        _require_schema(settings)
        asyncio.run(check_keys(settings, kek))
    except PreflightError as err:
        raise CliError(str(err)) from err


def _require_schema(settings: Settings) -> None:
    from swim_as.storage.schema import schema_problem

    problem = asyncio.run(schema_problem(settings.database.url))
    if problem:
        raise CliError(problem)
    from swim_as.lifecycle import lifecycle_problem

    problem = lifecycle_problem(settings)
    if problem:
        raise CliError(problem)


_WRONG_KEK = (
    "keys.encryption_key_file (or SWIM_AS_KEYS__ENCRYPTION_KEY) is not the "
    "key-encryption key the signing keys were stored with"
)


def _db_reason(err: BaseException) -> str:
    return str(getattr(err, "orig", None) or err).splitlines()[0][:300]


def cmd_dev(args: argparse.Namespace) -> int:
    from swim_as.dev import run_dev

    _setup_logging(None, "text")
    try:
        run_dev(Path(args.state_dir).resolve(), port=args.port)
    except OSError as err:
        raise CliError(str(err)) from err
    return 0


# -- administration -----------------------------------------------------------


def _run(settings: Settings, work: Callable[[Any], Awaitable[int]]) -> int:
    from swim_as.app import build_services

    _require_schema(settings)

    async def main() -> int:
        services = build_services(settings)
        try:
            return await work(services)
        finally:
            await services.db.close()

    try:
        return asyncio.run(main())
    except (OSError, DBAPIError) as err:
        raise CliError(f"database error: {_db_reason(err)}") from err


def _admin(services: Any) -> Any:
    from swim_as.app import enabled_methods
    from swim_as.clients.admin import ClientAdmin

    return ClientAdmin(
        services.db,
        services.clients,
        services.registration,
        services.clock,
        enabled_methods=frozenset(enabled_methods(services.settings)),
        actor=operator_name(),
    )


def operator_name() -> str:
    """Who runs the command, for the audit trail.

    The account of the process's user id, not $USER or $LOGNAME, which
    anyone can set to anything.
    """
    uid = os.geteuid()
    try:
        return f"operator:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"operator:uid-{uid}"


def _client_json(client: Any) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "auth_method": client.auth_method,
        "spiffe_id": client.spiffe_id,
        "granted_scopes": sorted(client.granted_scopes),
        "disabled": client.disabled,
        "created_at": client.created_at.isoformat(),
        "updated_at": client.updated_at.isoformat(),
        "created_by": client.created_by,
        "metadata": dict(client.metadata),
    }


def cmd_clients(args: argparse.Namespace) -> int:
    from swim_as.clients.admin import ClientNotFound
    from swim_as.errors import OAuthError

    settings = _settings(args)
    _setup_logging(settings, "text")

    async def work(services: Any) -> int:
        admin = _admin(services)
        try:
            if args.action == "add":
                _warn_unknown_trust_domains(settings, args.spiffe_id)
                for spiffe_id in args.spiffe_id:
                    reg = await admin.add(
                        spiffe_id,
                        method=args.method,
                        scopes=args.scope or (),
                        client_name=args.name,
                    )
                    verb = "added" if reg.created else "exists"
                    print(f"{verb}: {reg.client.client_id}")
                    if not args.quiet:
                        _print(_client_json(reg.client))
            elif args.action in ("add-key-client", "add-secret-client"):
                reg = await admin.add_other(
                    _other_client_body(args), scopes=args.scope or ()
                )
                print(f"added: {reg.client.client_id}")
                _print(_client_json(reg.client))
                if reg.client_secret is not None:
                    print(
                        "client_secret (shown once, stored only as a hash):\n"
                        f"{reg.client_secret}"
                    )
            elif args.action == "list":
                for client in await services.clients.list(prefix=args.prefix):
                    state = "disabled" if client.disabled else "enabled"
                    scopes = " ".join(sorted(client.granted_scopes)) or "-"
                    print(
                        f"{client.client_id}\t{client.auth_method}\t{state}\t{scopes}"
                    )
            elif args.action == "show":
                client = await services.clients.get(args.client_id)
                if client is None:
                    raise ClientNotFound(args.client_id)
                _print(_client_json(client))
            elif args.action in ("grant", "revoke"):
                change = admin.grant if args.action == "grant" else admin.revoke
                client = await change(args.client_id, args.scope)
                granted = " ".join(sorted(client.granted_scopes)) or "-"
                print(f"{client.client_id}: {granted}")
            elif args.action in ("disable", "enable"):
                client = await admin.set_disabled(
                    args.client_id, args.action == "disable"
                )
                print(f"{args.action}d: {client.client_id}")
            elif args.action == "delete":
                await admin.delete(args.client_id)
                print(f"deleted: {args.client_id}")
        except ClientNotFound as err:
            raise CliError(f"no such client: {err.args[0]}") from err
        except OAuthError as err:
            raise CliError(err.description) from err
        return 0

    return _run(settings, work)


def _other_client_body(args: argparse.Namespace) -> dict[str, Any]:
    """RFC 7591 metadata for ``clients add-key-client|add-secret-client``."""
    body: dict[str, Any] = {"token_endpoint_auth_method": args.method}
    if args.name:
        body["client_name"] = args.name
    if getattr(args, "jwks", None):
        try:
            body["jwks"] = json.loads(Path(args.jwks).read_text(encoding="utf-8"))
        except OSError as err:
            raise CliError(f"cannot read {args.jwks}: {err.strerror}") from err
        except ValueError as err:
            raise CliError(f"{args.jwks} is not JSON: {err}") from err
    if getattr(args, "jwks_uri", None):
        body["jwks_uri"] = args.jwks_uri
    return body


def cmd_keys(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _setup_logging(settings, "text")

    async def work(services: Any) -> int:
        if args.action == "rotate":
            from swim_as.keys.crypto import KeyDecryptionError

            try:
                kid = await services.rotator.rotate(
                    actor=operator_name(),
                    immediately=args.now,
                )
            except KeyDecryptionError as err:
                raise CliError(f"not rotating: {err}; {_WRONG_KEK}") from err
            when = "now" if args.now else f"in {settings.keys.publish_lead_seconds} s"
            print(f"next key {kid} is published and starts signing {when}")
            return 0
        from sqlalchemy import select

        from swim_as.storage.models import SigningKeyRow

        async with services.db.reading() as session:
            rows = (
                await session.scalars(
                    select(SigningKeyRow).order_by(SigningKeyRow.created_at)
                )
            ).all()
        if not rows:
            print("no signing keys yet (one is created when the server starts)")
        for row in rows:
            print(
                f"{row.kid}\t{row.alg}\t{row.state}\t"
                f"created {row.created_at.isoformat(timespec='seconds')}\t"
                f"signs from {row.activate_after.isoformat(timespec='seconds')}"
                + (
                    "\tpublished until "
                    + row.publish_until.isoformat(timespec="seconds")
                    if row.publish_until
                    else ""
                )
            )
        return 0

    return _run(settings, work)


def cmd_audit(args: argparse.Namespace) -> int:
    from swim_as.cli_lifecycle import parse_time

    settings = _settings(args)
    _setup_logging(settings, "text")
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    if args.limit < 1:
        raise CliError("--limit must be at least 1")

    async def work(db: Any) -> int:
        from sqlalchemy import select

        from swim_as.storage.models import AuditRow

        # By time: batched records (token.issued, …) are written after
        # records of later changes, but carry the time of their event.
        query = (
            select(AuditRow)
            .order_by(AuditRow.at.desc(), AuditRow.id.desc())
            .limit(args.limit)
        )
        if args.client:
            query = query.where(AuditRow.client_id == args.client)
        if args.event:
            query = query.where(AuditRow.event.startswith(args.event, autoescape=True))
        if args.actor:
            query = query.where(AuditRow.actor.startswith(args.actor, autoescape=True))
        if since is not None:
            query = query.where(AuditRow.at >= since)
        if until is not None:
            query = query.where(AuditRow.at < until)
        async with db.reading() as session:
            rows = list((await session.scalars(query)).all())
        for row in reversed(rows):
            entry = {
                "id": row.id,
                "at": row.at.isoformat(),
                "event": row.event,
                "actor": row.actor,
                "client_id": row.client_id,
                "detail": row.detail,
            }
            if args.json:
                print(json.dumps(entry, ensure_ascii=False))
            else:
                detail = (
                    json.dumps(row.detail, ensure_ascii=False) if row.detail else ""
                )
                print(
                    f"{row.at.isoformat(timespec='seconds')}  {row.event:<28} "
                    f"{row.client_id or '-'}  by {row.actor}  {detail}"
                )
        return 0

    async def main() -> int:
        # Only the database: reading the trail needs no keys or policy.
        from swim_as.storage.db import Database

        db = Database(settings.database.url)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(main())


def _warn_unknown_trust_domains(settings: Settings, ids: Sequence[str]) -> None:
    configured = {td.name for td in settings.trust_domains}
    for spiffe_id in ids:
        domain = spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
        if spiffe_id.startswith("spiffe://") and domain not in configured:
            print(
                f"swim-as: warning: {domain} is not a configured trust domain; "
                f"{spiffe_id} cannot authenticate until it is",
                file=sys.stderr,
            )


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swim-as",
        description="OAuth 2.0 authorization server for SPIFFE workloads.",
    )
    parser.add_argument(
        "--config",
        dest="global_config",
        metavar="FILE",
        help="TOML settings file, before or after the command",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            metavar="FILE",
            help="TOML settings file (default: $SWIM_AS_CONFIG); "
            "SWIM_AS_* variables override it",
        )
        return p

    dev = sub.add_parser("dev", help="run a development server, no configuration")
    dev.add_argument(
        "--state-dir", default=".swim-as-dev", help="where dev state lives"
    )
    dev.add_argument("--port", type=int, default=8443)
    dev.set_defaults(func=cmd_dev)

    with_config(sub.add_parser("serve", help="run the server")).set_defaults(
        func=cmd_serve
    )
    with_config(
        sub.add_parser("migrate", help="apply database migrations")
    ).set_defaults(func=cmd_migrate)

    clients = sub.add_parser("clients", help="manage clients")
    actions = clients.add_subparsers(dest="action", required=True)
    add = with_config(
        actions.add_parser("add", help="register SPIFFE workloads (idempotent)")
    )
    add.add_argument("spiffe_id", nargs="+")
    add.add_argument("-q", "--quiet", action="store_true", help="one line per client")
    add.add_argument(
        "--method",
        default="tls_client_auth",
        choices=["tls_client_auth", "spiffe_x509", "spiffe_jwt"],
    )
    add.add_argument("--scope", action="append", help="grant a scope (repeatable)")
    add.add_argument("--name", help="client_name")
    key_client = with_config(
        actions.add_parser(
            "add-key-client",
            help="register a client that signs with its own key or presents a "
            "self-signed certificate (opaque client_id)",
        )
    )
    key_client.add_argument(
        "--method",
        required=True,
        choices=["private_key_jwt", "self_signed_tls_client_auth"],
    )
    keys_from = key_client.add_mutually_exclusive_group(required=True)
    keys_from.add_argument("--jwks", metavar="FILE", help="JWK Set file (public keys)")
    keys_from.add_argument("--jwks-uri", metavar="URL", help="https URL of a JWK Set")
    key_client.add_argument("--scope", action="append", help="grant a scope")
    key_client.add_argument("--name", help="client_name")
    secret_client = with_config(
        actions.add_parser(
            "add-secret-client",
            help="register a client secret client (only to migrate away from "
            "secrets; the method must be listed in client_auth.methods)",
        )
    )
    secret_client.add_argument(
        "--method",
        required=True,
        choices=["client_secret_basic", "client_secret_post"],
    )
    secret_client.add_argument("--scope", action="append", help="grant a scope")
    secret_client.add_argument("--name", help="client_name")
    listing = with_config(actions.add_parser("list", help="list clients"))
    listing.add_argument("--prefix", help="only client_ids starting with this")
    for name, text in (
        ("show", "show one client"),
        ("disable", "refuse tokens to a client"),
        ("enable", "allow a disabled client again"),
        ("delete", "delete a client"),
    ):
        p = with_config(actions.add_parser(name, help=text))
        p.add_argument("client_id")
    for name, text in (("grant", "grant scopes"), ("revoke", "take scopes away")):
        p = with_config(actions.add_parser(name, help=text))
        p.add_argument("client_id")
        p.add_argument("scope", nargs="+")
    clients.set_defaults(func=cmd_clients)

    keys = sub.add_parser("keys", help="signing keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    with_config(key_actions.add_parser("list", help="list signing keys"))
    rotate = with_config(key_actions.add_parser("rotate", help="schedule a new key"))
    rotate.add_argument(
        "--now",
        action="store_true",
        help="sign with the new key at once (after a compromise); verifiers "
        "holding an old JWKS refetch it on the unknown kid",
    )
    keys.set_defaults(func=cmd_keys)

    audit = with_config(sub.add_parser("audit", help="list audit records"))
    audit.add_argument("--client", help="only records about this client_id")
    audit.add_argument("--event", help="only events starting with this (e.g. client.)")
    audit.add_argument(
        "--actor", help="only records by actors starting with this (e.g. iat:)"
    )
    audit.add_argument(
        "--since", help="from this time: ISO 8601 (UTC if no offset) or 2h, 7d ago"
    )
    audit.add_argument("--until", help="before this time (same forms as --since)")
    audit.add_argument("--limit", type=int, default=100, help="newest N (100)")
    audit.add_argument("--json", action="store_true", help="JSON lines")
    audit.set_defaults(func=cmd_audit)

    from swim_as.cli_lifecycle import add_commands

    add_commands(sub, with_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Stored text may hold anything a client sent; printing it must not fail.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        sys.stdout.flush()
    except CliError as err:
        print(f"swim-as: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `swim-as audit | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status


if __name__ == "__main__":
    # `python -m swim_as.cli`: run the package's module, not this copy, so
    # that its CliError is the one the commands raise.
    from swim_as.cli import main as package_main

    sys.exit(package_main())
