"""Bad settings stop the start with one line naming the setting, its source and what is allowed (issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from radtriage.app.config import SettingsError, load_settings, load_settings_with_sources
from radtriage.cli import main


def _toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "radtriage.toml"
    path.write_text("[radtriage]\n" + body)
    return path


@pytest.mark.parametrize(
    ("body", "env", "expected"),
    [
        ("port = 70000\n", {}, "setting port (in {file}): 70000 is not allowed; use a port number from 1 to 65535"),
        ("port = 0\n", {}, "setting port (in {file}): 0 is not allowed"),
        ('port = "abc"\n', {}, "setting port (in {file}): 'abc' is not allowed"),
        ("prot = 8080\n", {}, 'setting prot (in {file}): unknown setting; did you mean "port"?'),
        ('study_source = "pacs"\n', {}, "setting study_source (in {file}): 'pacs' is not allowed; use \"folder\" or"),
        ("workers = 0\n", {}, "setting workers (in {file}): 0 is not allowed; use a whole number of at least 1"),
        ('auth_required = "yes"\n', {}, "setting auth_required (in {file}): 'yes' is not allowed; use true or false"),
        ("port = 1\nport = 2\n", {}, "setting config (--config): {file} is not valid TOML: Cannot overwrite a value"),
        ("", {"RADTRIAGE_WORKERS": "two"}, "setting workers (environment RADTRIAGE_WORKERS): 'two' is not allowed"),
        ("", {"RADTRIAGE_PORT": "65536"}, "setting port (environment RADTRIAGE_PORT): 65536 is not allowed"),
        ("", {"RADTRIAGE_MLLP_PORT": "-1"}, "setting mllp_port (environment RADTRIAGE_MLLP_PORT): -1 is not allowed"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_its_source_and_what_is_allowed(
    tmp_path: Path, body: str, env: dict[str, str], expected: str
) -> None:
    path = _toml(tmp_path, body)
    with pytest.raises(SettingsError) as refused:
        load_settings(path, env=env)
    message = str(refused.value)
    assert message.startswith(expected.format(file=path)) and "\n" not in message


def test_a_mysql_url_is_refused_without_showing_its_password() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(env={"RADTRIAGE_DATABASE_URL": "mysql+pymysql://triage:hunter22@db/triage"})
    assert "database_url" in str(refused.value) and "hunter22" not in str(refused.value)
    assert "postgresql" in str(refused.value)


def test_sources_are_tracked_and_the_command_line_wins(tmp_path: Path) -> None:
    path = _toml(tmp_path, "workers = 3\nport = 9000\ndicomweb_timeout = 2\n")
    settings, sources = load_settings_with_sources(path, env={"RADTRIAGE_PORT": "9100"}, host="0.0.0.0")
    assert (settings.workers, settings.port, settings.dicomweb_timeout, settings.host) == (3, 9100, 2.0, "0.0.0.0")
    assert sources["workers"] == f"in {path}" and sources["port"] == "environment RADTRIAGE_PORT"
    assert sources["host"] == "command line --host" and sources["mode"] == "default"


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_serve_refuses_bad_settings_and_production_without_secrets_before_starting(tmp_path: Path) -> None:
    home = {"RADTRIAGE_HOME": str(tmp_path)}
    code, out = _cli(["--config", str(tmp_path / "missing.toml"), "serve"], home)
    assert code == 2 and "the file" in out and "does not exist" in out and "Traceback" not in out
    code, out = _cli(["serve", "--port", "70000"], home)
    assert code == 2 and "setting port (command line --port)" in out
    code, out = _cli(["serve"], {**home, "RADTRIAGE_MODE": "production", "RADTRIAGE_AUTH_REQUIRED": "true"})
    assert code == 2 and out.count("\n") == 1
    for needed in ("auth_signing_key", "auth_clients", "web_users", "web_secret_key", "environment RADTRIAGE_MODE"):
        assert needed in out, needed
    assert not (tmp_path / "radtriage.sqlite3").exists()  # refused before anything was built


def test_config_show_prints_every_setting_with_its_source_and_masks_secrets(tmp_path: Path) -> None:
    env = {
        "RADTRIAGE_HOME": str(tmp_path),
        "RADTRIAGE_DICOMWEB_PASSWORD": "pacs-password-1",
        "RADTRIAGE_WEB_SECRET_KEY": "s" * 40,
        "RADTRIAGE_DATABASE_URL": "postgresql+psycopg://triage:db-password-2@localhost/triage",
    }
    path = _toml(tmp_path, "workers = 4\n")
    code, out = _cli(["--config", str(path), "config", "show"], env)
    assert code == 0
    for secret in ("pacs-password-1", "s" * 40, "db-password-2"):
        assert secret not in out
    assert "workers" in out and f"(in {path})" in out and "(environment RADTRIAGE_DICOMWEB_PASSWORD)" in out
    assert "port" in out and "(default)" in out
    code, out = _cli(["--config", str(path), "config", "show", "--json", "--changed"], env)
    shown = json.loads(out)
    assert shown["workers"] == {"value": "4", "source": f"in {path}"}
    assert shown["web_secret_key"]["value"] == "(set, hidden)" and "port" not in shown


def test_serve_help_points_to_config_show() -> None:
    code, out = _cli(["serve", "--help"], {})
    assert code == 0 and "radtriage config show" in out and "1-65535" in out


def test_a_real_process_with_port_70000_exits_non_zero_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "radtriage.cli", "serve"],
        env={**os.environ, "RADTRIAGE_HOME": str(tmp_path), "RADTRIAGE_PORT": "70000"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        "radtriage: setting port (environment RADTRIAGE_PORT): 70000 is not allowed; use a port number from 1 to 65535"
    ]


def test_an_unreadable_users_file_stops_serve_with_one_line(tmp_path: Path) -> None:
    env = {"RADTRIAGE_HOME": str(tmp_path), "RADTRIAGE_WEB_USERS": str(tmp_path / "missing.json")}
    code, out = _cli(["serve", "--port", "18124"], env)
    assert code == 2 and out.strip().splitlines()[-1].startswith("radtriage: setting web_users (the users file): ")
    assert "Traceback" not in out
