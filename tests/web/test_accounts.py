"""Sessions that end on the server, the account lockout and the per-address slow-down (issue 14)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask.testing import FlaskClient

from radtriage.app.factory import Components
from radtriage.web.accounts import LOCKOUT_FAILURES, SessionStore, SignInGuard
from radtriage.web.users import update_user
from tests.web.conftest import PASSWORD, _csrf, csrf_of, sign_in
from tests.web.test_pages import records, user_of

COOKIE = "radtriage_session"


def _saved_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def _try(client: FlaskClient, username: str, password: str, address: str) -> tuple[int, str, dict[str, str]]:
    environ = {"REMOTE_ADDR": address}
    token = _csrf(client.get("/login", environ_base=environ).get_data(as_text=True))
    response = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token},
        environ_base=environ,
    )
    return response.status_code, response.get_data(as_text=True), dict(response.headers)


def _touch(path: Path) -> None:
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new mtime even within the same second


def test_a_cookie_saved_before_sign_out_no_longer_opens_anything(client: FlaskClient, components: Components) -> None:
    sign_in(client, "rad")
    saved = _saved_cookie(client)
    assert client.get("/worklist").status_code == 200
    client.post("/logout", data={"csrf_token": csrf_of(client, "/worklist")})
    assert [user_of(r) for r in records(components, kind="logout")] == ["rad"]

    client.set_cookie(COOKIE, saved)  # someone kept a copy of the cookie
    page = client.get("/worklist")
    assert page.status_code == 302 and "reason=" in page.headers["Location"]
    client.set_cookie(COOKIE, saved)
    data = client.get("/worklist.json")
    assert data.status_code == 401 and data.json["error"] == "ended"  # type: ignore[index]


def test_disabling_a_user_or_changing_the_password_ends_their_sessions(
    client: FlaskClient, users_file: Path, components: Components
) -> None:
    sign_in(client, "rad")
    saved = _saved_cookie(client)
    update_user(users_file, "rad", password="a brand new password")
    _touch(users_file)
    assert client.get("/worklist.json").status_code == 401
    client.set_cookie(COOKIE, saved)
    assert client.get("/worklist.json").status_code == 401  # the row on the server is ended too
    assert client.get("/worklist.json").status_code == 401

    sign_in(client, "rad", "a brand new password")
    assert client.get("/worklist.json").status_code == 200
    update_user(users_file, "rad", disabled=True)
    _touch(users_file)
    response = client.get("/worklist.json")
    assert response.status_code == 401 and response.json["error"] == "unknown-user"  # type: ignore[index]
    status, body, _headers = _try(client, "rad", "a brand new password", "192.0.2.1")
    assert status == 401 and "not right" in body  # a disabled user cannot sign in

    update_user(users_file, "rad", disabled=False)
    _touch(users_file)
    sign_in(client, "rad", "a brand new password")
    # What `radtriage users disable` does besides the file: end the sessions in the database.
    assert SessionStore(components.engine).end_all("rad", "disabled") == 1
    assert client.get("/worklist.json").status_code == 401


def test_five_wrong_passwords_lock_the_account_until_an_administrator_unlocks_it(
    client: FlaskClient, components: Components
) -> None:
    for attempt in range(LOCKOUT_FAILURES):  # from different addresses: the lockout is per account
        status, _body, _headers = _try(client, "rad", f"wrong {attempt}", f"192.0.2.{attempt + 10}")
        assert status == 401
    status, body, headers = _try(client, "rad", PASSWORD, "198.51.100.7")
    assert status == 429 and "locked" in body
    assert 14 * 60 <= int(headers["Retry-After"]) <= 15 * 60
    locked = records(components, kind="account-locked")
    assert len(locked) == 1 and user_of(locked[0]) == "rad"
    refused = records(components, kind="sign-in-throttled")
    assert len(refused) == 1 and refused[0]["outcomeDesc"] == "account-locked"
    assert client.get("/worklist").status_code == 302  # the right password did not sign in

    assert SignInGuard(components.engine).unlock("rad") == LOCKOUT_FAILURES  # `radtriage users unlock rad`
    status, _body, _headers = _try(client, "rad", PASSWORD, "198.51.100.7")
    assert status == 302
    assert client.get("/worklist").status_code == 200


def test_repeated_failures_from_one_address_are_slowed_down_and_audited(
    client: FlaskClient, components: Components
) -> None:
    for name in ("a1", "a2", "a3", "a4"):  # different names: no account reaches the lockout
        status, _body, _headers = _try(client, name, "wrong password", "203.0.113.5")
        assert status == 401
    status, body, headers = _try(client, "rad", PASSWORD, "203.0.113.5")
    assert status == 429 and "Too many wrong passwords" in body and int(headers["Retry-After"]) >= 1
    assert records(components, kind="sign-in-throttled")[0]["outcomeDesc"] == "address-throttled"
    status, _body, _headers = _try(client, "rad", PASSWORD, "203.0.113.6")  # another address is not slowed
    assert status == 302


def test_the_slow_down_doubles_per_failure_and_expires(components: Components) -> None:
    guard = SignInGuard(components.engine)
    start = datetime.now(UTC)
    for index in range(6):
        guard.failed(f"name{index}", "203.0.113.9", start + timedelta(seconds=index))
    last = start + timedelta(seconds=5)
    refusal = guard.refusal("someone", "203.0.113.9", last)
    assert refusal is not None and refusal.reason == "address-throttled" and refusal.retry_after_s == 4  # 6 - 3
    assert guard.refusal("someone", "203.0.113.9", last + timedelta(seconds=4)) is None
    assert guard.refusal("someone", "203.0.113.9", last + timedelta(minutes=16)) is None


def test_the_lockout_needs_five_failures_within_fifteen_minutes_and_lasts_fifteen(components: Components) -> None:
    guard = SignInGuard(components.engine)
    start = datetime.now(UTC) - timedelta(hours=1)
    for minute in (0, 4, 8, 12, 16):  # five failures, but spread over 16 minutes
        assert not guard.failed("spread", None, start + timedelta(minutes=minute))
    assert guard.locked_until("spread", start + timedelta(minutes=16)) is None
    for second in range(LOCKOUT_FAILURES):
        locked = guard.failed("quick", None, start + timedelta(seconds=second))
    assert locked
    assert guard.locked_until("quick", start + timedelta(minutes=14)) is not None
    assert guard.locked_until("quick", start + timedelta(minutes=15, seconds=5)) is None
