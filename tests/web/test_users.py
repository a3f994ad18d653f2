"""People's passwords and the users file; the web settings' production checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radtriage.app.factory import Components
from radtriage.compliance.auth import InsecureConfiguration
from radtriage.web.settings import WebSettings
from radtriage.web.users import (
    SCRYPT_N,
    UserDirectory,
    WebRole,
    WebUser,
    add_user,
    hash_password,
    verify_password,
)


def test_a_password_hash_is_salted_scrypt_with_its_parameters_and_checks_only_the_right_password() -> None:
    first, second = hash_password("s3cret-enough"), hash_password("s3cret-enough")
    assert first.startswith(f"scrypt${SCRYPT_N}$8$1$")
    assert first != second  # a fresh salt each time
    assert verify_password("s3cret-enough", first) and verify_password("s3cret-enough", second)
    assert not verify_password("s3cret-enougH", first)
    assert not verify_password("s3cret-enough", "md5$abc")
    assert not verify_password("s3cret-enough", "scrypt$x$y$z$00$00")


def test_the_users_file_round_trips_and_refuses_unknown_roles_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    add_user(path, "adoe", WebRole.RADIOLOGIST, "a long password", "Dr A. Doe")
    add_user(path, "cleo", WebRole.COMPLIANCE, "another password")
    add_user(path, "adoe", WebRole.ADMIN, "changed password")  # replaces, never duplicates
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only
    users = UserDirectory.from_file(path)
    assert len(users) == 2
    assert users.authenticate("adoe", "changed password") == users.get("adoe")
    assert users.get("adoe") is not None and users.get("adoe").role is WebRole.ADMIN  # type: ignore[union-attr]
    assert users.authenticate("adoe", "a long password") is None
    assert users.authenticate("nobody", "changed password") is None
    entry = json.loads(path.read_text())["users"][0]
    with pytest.raises(ValueError):
        UserDirectory.from_dict({"users": [{**entry, "role": "superuser"}]})
    with pytest.raises(ValueError, match="twice"):
        UserDirectory.from_dict({"users": [entry, entry]})
    with pytest.raises(ValueError):
        WebUser("x", WebRole.ADMIN, "plaintext-password")


def test_roles_open_only_their_pages() -> None:
    rad = WebUser("r", WebRole.RADIOLOGIST, hash_password("pw", n=2**10))
    comp = WebUser("c", WebRole.COMPLIANCE, hash_password("pw", n=2**10))
    assert rad.may_open("worklist") and rad.may_open("study") and not rad.may_open("compliance")
    assert comp.may_open("compliance") and not comp.may_open("worklist") and not comp.may_open("study")
    assert all(WebUser("a", WebRole.ADMIN, rad.password_hash).may_open(p) for p in ("worklist", "compliance", "model"))


def test_production_refuses_to_start_the_pages_without_a_real_secret_and_a_users_file() -> None:
    class Production:
        mode = "production"

    with pytest.raises(InsecureConfiguration, match="web_secret_key.*web_users"):
        WebSettings.from_settings(Production(), env={}).checked_secret()
    with pytest.raises(InsecureConfiguration, match="web_secret_key"):
        WebSettings.from_settings(
            Production(), env={"RADTRIAGE_WEB_SECRET_KEY": "short", "RADTRIAGE_WEB_USERS": "/etc/users.json"}
        ).checked_secret()
    secret = "k" * 40
    ready = WebSettings.from_settings(
        Production(), env={"RADTRIAGE_WEB_SECRET_KEY": secret, "RADTRIAGE_WEB_USERS": "/etc/users.json"}
    )
    assert ready.checked_secret() == secret and ready.production


def test_a_missing_or_broken_users_file_stops_the_start(components: Components, tmp_path: Path) -> None:
    from radtriage.web import web_blueprint

    with pytest.raises(ValueError, match="cannot be read"):
        web_blueprint(components, web_settings=WebSettings(users_file=str(tmp_path / "absent.json")))
    broken = tmp_path / "broken.json"
    broken.write_text('{"users": [{"username": "x"}]}')
    with pytest.raises(ValueError, match="cannot be read"):
        web_blueprint(components, web_settings=WebSettings(users_file=str(broken)))


def test_development_without_a_secret_gets_a_random_one_per_process() -> None:
    class Development:
        mode = "development"

    settings = WebSettings.from_settings(Development(), env={"RADTRIAGE_WEB_SESSION_IDLE_MINUTES": "5"})
    assert settings.session_idle_minutes == 5
    first, second = settings.checked_secret(), settings.checked_secret()
    assert len(first) >= 32 and first != second
