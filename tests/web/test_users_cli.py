"""``radtriage users ...`` as an administrator uses it: scripted and refused input, sessions ended, audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from radtriage.app.config import load_settings
from radtriage.app.storage import create_database_engine, migrate
from radtriage.cli import main
from radtriage.compliance.audit_store import AuditFilter, AuditLog
from radtriage.web.accounts import SessionStore, SignInGuard
from radtriage.web.users import UserDirectory


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"RADTRIAGE_HOME": str(tmp_path / "home"), "RADTRIAGE_WEB_USERS": str(tmp_path / "users.json")}


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=stdin, env=env)
    # A refusal is a message and an exit status, never an exception escaping the command.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_add_list_and_the_users_file_default_from_the_settings(env: dict[str, str], tmp_path: Path) -> None:
    code, out = run(
        env, "users", "add", "alice", "--role", "radiologist", "--password-stdin", stdin="twelve chars ok\n"
    )
    assert code == 0, out
    code, out = run(
        env, "users", "add", "bob", "--role", "admin", "--display-name", "Bob B", stdin="pass phrase 123\n" * 2
    )
    assert code == 0, out  # the prompt asks twice
    directory = UserDirectory.from_file(tmp_path / "users.json")
    assert directory.authenticate("alice", "twelve chars ok") is not None
    assert directory.authenticate("bob", "pass phrase 123") is not None
    assert oct((tmp_path / "users.json").stat().st_mode & 0o777) == "0o600"
    code, out = run(env, "users", "list")
    assert code == 0 and "alice" in out and "radiologist" in out and "Bob B" in out and "scrypt" not in out


def test_refusals_exit_non_zero_with_one_clear_line(env: dict[str, str], tmp_path: Path) -> None:
    code, out = run(env, "users", "add", "alice", "--role", "radiologist", "--password-stdin", stdin="short\n")
    assert code != 0 and "at least 12 characters" in out and not (tmp_path / "users.json").exists()
    code, out = run(env, "users", "add", "alice", "--role", "surgeon", "--password-stdin", stdin="x" * 20)
    assert code != 0 and "surgeon" in out
    code, out = run(env, "users", "disable", "nobody")
    assert code != 0 and "no user 'nobody'" in out
    (tmp_path / "users.json").write_text("{not json")
    code, out = run(env, "users", "list")
    assert code != 0 and "cannot be read" in out
    code, out = run({"RADTRIAGE_HOME": env["RADTRIAGE_HOME"]}, "users", "list")
    assert code != 0 and "web_users" in out


def test_disable_and_reset_password_end_sessions_unlock_lifts_the_lockout_and_all_is_audited(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert (
        run(env, "users", "add", "alice", "--role", "radiologist", "--password-stdin", stdin="first password!\n")[0]
        == 0
    )
    engine = create_database_engine(load_settings(env=env).resolved_database_url())
    migrate(engine)
    sessions = SessionStore(engine)
    first, second = sessions.start("alice"), sessions.start("alice")

    code, out = run(env, "users", "disable", "alice")
    assert code == 0 and "2 open session(s) ended" in out
    assert not sessions.is_live(first, "alice") and not sessions.is_live(second, "alice")
    assert UserDirectory.from_file(tmp_path / "users.json").get("alice") is None
    assert "disabled" in run(env, "users", "list")[1]
    assert run(env, "users", "enable", "alice")[0] == 0
    third = sessions.start("alice")
    code, out = run(env, "users", "reset-password", "alice", "--password-stdin", stdin="second password!\n")
    assert code == 0 and not sessions.is_live(third, "alice")
    assert UserDirectory.from_file(tmp_path / "users.json").authenticate("alice", "second password!") is not None

    guard = SignInGuard(engine)
    for _ in range(5):
        guard.failed("alice", None)
    assert guard.locked_until("alice") is not None
    code, out = run(env, "users", "unlock", "alice")
    assert code == 0 and "5 recent failed" in out and guard.locked_until("alice") is None

    events, _ = AuditLog(engine).search(AuditFilter(kind="user-account-changed"), limit=50)
    changes = [json.dumps(e.resource()) for e in events]
    for change in ("disabled", "enabled", "password-reset", "unlocked"):
        assert any(f'"{change}"' in text for text in changes), change
    engine.dispose()
