"""Access wiring: the users' store, the alert webhook, and ``journeys users …``.

The users command works on the store directly, with or without a running node:
the first admin has to exist before anyone can sign in to add the others.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from typing import Any

import httpx

from api.access import AccessAlerts, AccessControl, AlertSink
from projections.access import AccessStore, AuditEntry, Role, UnknownUser, UserExists
from stack.settings import Settings
from streams.outreach.channels import SIGNATURE_HEADER, sign


def build_access_store(settings: Settings) -> AccessStore:
    """The users, sessions and audit log: the event store's PostgreSQL, or data/access.sqlite."""
    if settings.event_store == "postgres":
        return AccessStore(postgres_dsn=settings.postgres_dsn)
    return AccessStore(sqlite_path=settings.access_store_path)


def access_control(settings: Settings, store: AccessStore) -> AccessControl:
    """The API's access collaborators, from the settings."""
    return AccessControl(
        store=store,
        alerts=AccessAlerts(
            customers_per_min=settings.alert_customers_per_min,
            sign_in_failures=settings.signin_max_failures,
            sign_in_window_s=settings.signin_window_s,
        ),
        session_hours=settings.session_hours,
        secure_cookies=settings.api_base_url.startswith("https://"),
        alert_sink=alert_webhook(settings),
    )


def alert_webhook(settings: Settings) -> AlertSink | None:
    """POST each alert as JSON, signed as outreach webhooks are; None when no URL is set."""
    url = settings.alert_webhook_url
    if not url:
        return None
    secret = settings.alert_webhook_secret

    async def post(alert: dict[str, Any]) -> None:
        body = json.dumps(alert, sort_keys=True).encode()
        headers = {"Content-Type": "application/json"}
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, int(time.time()), body)
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.post(url, content=body, headers=headers)
            response.raise_for_status()

    return post


def add_parser(commands: Any) -> None:
    """``journeys users add|list|disable|enable|set-role|passwd``."""
    parser = commands.add_parser("users", help="people who sign in, and their roles")
    verbs = parser.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="add a user (asks for the password)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[role.name for role in Role])
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    verbs.add_parser("list", help="every user with their role")
    for name, text in (("disable", "sign a user out and keep them out"), ("enable", "let back in")):
        verbs.add_parser(name, help=text).add_argument("name")
    role = verbs.add_parser("set-role", help="change a user's role")
    role.add_argument("name")
    role.add_argument("role", choices=[role.name for role in Role])
    password = verbs.add_parser("passwd", help="set a new password (ends their sessions)")
    password.add_argument("name")
    password.add_argument("--password-stdin", action="store_true")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Do what was asked; the user as JSON; 1 with a message on a refusal."""
    store = build_access_store(settings)
    try:
        if args.verb == "list":
            print(json.dumps([user.summary() for user in store.users()], indent=2))
            return 0
        if args.verb == "add":
            user = store.add_user(args.name, Role[args.role], _password(args.password_stdin))
        elif args.verb == "passwd":
            user = store.change_user(args.name, password=_password(args.password_stdin))
        elif args.verb == "set-role":
            user = store.change_user(args.name, role=Role[args.role])
        else:
            user = store.change_user(args.name, disabled=args.verb == "disable")
        # The command acts on the store directly: it is written down as an admin act is.
        detail = {"role": user.role.name} if args.verb in ("add", "set-role") else {}
        store.record(
            AuditEntry(
                actor=f"cli:{getpass.getuser()}",
                role="operator",
                action=f"users.{args.verb}",
                target=user.name,
                source="local",
                outcome="allowed",
                detail=detail,
            )
        )
        print(json.dumps(user.summary(), indent=2))
        return 0
    except UnknownUser:
        print(f"journeys users: no user named {args.name!r}", file=sys.stderr)
    except (UserExists, ValueError) as error:
        print(f"journeys users: {error}", file=sys.stderr)
    finally:
        store.close()
    return 1


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first
