"""``radtriage users ...``: the people who may sign in to the web pages (the users file named by ``web_users``).

    radtriage users add alice --role radiologist [--file users.json] [--password-stdin] [--display-name ...]
    radtriage users list | disable NAME | enable NAME | reset-password NAME | unlock NAME

Passwords have at least 12 characters; they are read from standard input with ``--password-stdin`` (one line, for
scripts) or asked for twice at a prompt. Disabling a user and setting a new password end that user's open
sessions at once (the web pages check the database at every request); ``unlock`` lifts the lockout that follows
repeated wrong passwords. Every change is recorded in the audit trail (who: the operating-system user).
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Any

import click

from .users import MIN_PASSWORD_LENGTH, UsersFileError, WebRole, add_user, check_password, read_users, update_user


class _Database:
    """The service's database, opened only by the commands that need it (sessions, lockout, audit)."""

    def __init__(self, settings: Any) -> None:
        from ..app.storage import create_database_engine, migrate

        self.engine = create_database_engine(settings.resolved_database_url())
        migrate(self.engine)

    def audit(self, account: str, change: str, details: dict[str, str] | None = None) -> None:
        from ..compliance.audit import USER_ACCOUNT_CHANGED, AuditRecord
        from ..compliance.audit_store import AuditLog

        try:
            operator = getpass.getuser()
        except (KeyError, OSError):
            operator = "unknown"
        AuditLog(self.engine).record(
            AuditRecord(
                USER_ACCOUNT_CHANGED,
                client_id="radtriage-cli",
                user_id=f"os:{operator}"[:255],
                purpose_of_use="HSYSADMIN",
                details={"account": account, "change": change, **(details or {})},
            )
        )


def _settings(obj: Any) -> Any:
    from ..app.config import load_settings

    return load_settings(obj.get("config") if isinstance(obj, dict) else None)


def _users_file(obj: Any, file: Path | None) -> Path:
    if file is not None:
        return file
    configured = _settings(obj).web_users
    if not configured:
        raise click.UsageError("give --file, or set web_users (RADTRIAGE_WEB_USERS) to the users file")
    return Path(configured)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt="Repeat")
    try:
        check_password(password)
    except UsersFileError as refused:
        raise click.ClickException(str(refused)) from None
    return str(password)


file_option = click.option(
    "--file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The users file (default: the web_users setting).",
)
stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (one line) instead of a prompt."
)


@click.group("users")
def users_group() -> None:
    """People who sign in to the web pages: add, list, disable, enable, reset-password, unlock.

    Passwords need at least 12 characters.
    """


@users_group.command("add")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice([r.value for r in WebRole]))
@click.option("--display-name", default="", help="Name shown on the pages, e.g. 'Dr A. Doe'.")
@file_option
@stdin_option
@click.pass_obj
def add_command(obj: Any, username: str, role: str, display_name: str, file: Path | None, password_stdin: bool) -> None:
    """Add a user (or replace one of that name)."""
    path = _users_file(obj, file)
    password = _read_password(password_stdin)
    try:
        add_user(path, username, WebRole(role), password, display_name)
    except (UsersFileError, ValueError) as refused:
        raise click.ClickException(str(refused)) from None
    click.echo(f"user {username} ({role}) written to {path}")


@users_group.command("list")
@file_option
@click.pass_obj
def list_command(obj: Any, file: Path | None) -> None:
    """Every user: name, role, state, display name (never password hashes)."""
    path = _users_file(obj, file)
    try:
        users = read_users(path)
    except UsersFileError as refused:
        raise click.ClickException(str(refused)) from None
    if not users:
        click.echo(f"no users in {path}")
        return
    width = max(len(u.username) for u in users)
    for user in sorted(users, key=lambda u: u.username):
        state = "disabled" if user.disabled else "enabled"
        click.echo(f"{user.username:<{width}}  {user.role.value:<11}  {state:<8}  {user.display_name}".rstrip())


def _change(obj: Any, file: Path | None, username: str, change: str, **what: Any) -> None:
    path = _users_file(obj, file)
    try:
        update_user(path, username, **what)
    except UsersFileError as refused:
        raise click.ClickException(str(refused)) from None
    ended = 0
    database = _Database(_settings(obj))
    if change in ("disabled", "password-reset"):
        from .accounts import SessionStore

        ended = SessionStore(database.engine).end_all(username, change)
    database.audit(username, change, {"sessions_ended": str(ended)})
    click.echo(f"user {username}: {change.replace('-', ' ')}; {ended} open session(s) ended")


@users_group.command("disable")
@click.argument("username")
@file_option
@click.pass_obj
def disable_command(obj: Any, username: str, file: Path | None) -> None:
    """Stop a user from signing in, and end their open sessions."""
    _change(obj, file, username, "disabled", disabled=True)


@users_group.command("enable")
@click.argument("username")
@file_option
@click.pass_obj
def enable_command(obj: Any, username: str, file: Path | None) -> None:
    """Let a disabled user sign in again."""
    _change(obj, file, username, "enabled", disabled=False)


@users_group.command("reset-password")
@click.argument("username")
@file_option
@stdin_option
@click.pass_obj
def reset_password_command(obj: Any, username: str, file: Path | None, password_stdin: bool) -> None:
    """Set a new password (at least 12 characters); ends the user's open sessions."""
    password = _read_password(password_stdin)
    _change(obj, file, username, "password-reset", password=password)


@users_group.command("unlock")
@click.argument("username")
@click.pass_obj
def unlock_command(obj: Any, username: str) -> None:
    """Lift the lockout after repeated wrong passwords (and forget the failures)."""
    from .accounts import SignInGuard

    database = _Database(_settings(obj))
    forgotten = SignInGuard(database.engine).unlock(username)
    database.audit(username, "unlocked", {"failures_forgotten": str(forgotten)})
    click.echo(f"user {username}: unlocked ({forgotten} recent failed sign-in(s) forgotten)")


__all__ = ["users_group", "MIN_PASSWORD_LENGTH"]
