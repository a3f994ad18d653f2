"""People who sign in to the web pages: a users file, scrypt password hashes, and the roles people can hold.

The FHIR API's access control (`radtriage.compliance.auth`) is for machines: clients with keys and OAuth tokens.
People sign in with a user name and a password, checked against a JSON file that an administrator keeps::

    {"users": [{"username": "adoe", "role": "radiologist", "display_name": "Dr A. Doe",
                "password_hash": "scrypt$16384$8$1$<salt hex>$<hash hex>"}]}

Write entries with ``python -m radtriage.web.users add --file users.json --username adoe --role radiologist``
(it asks for the password twice). There is no default user and no default password.

Passwords are hashed with scrypt (RFC 7914) through `hashlib.scrypt`: a memory-hard key derivation function,
16-byte random salt per password, parameters stored with each hash so they can be raised later.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import click

#: scrypt cost parameters for new hashes (N = 2**14, r = 8, p = 1: about 16 MiB and tens of milliseconds).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
_MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
#: Hash a dummy password when the user does not exist, so the response time does not reveal who exists.
_DUMMY_HASH_PARAMS = (SCRYPT_N, SCRYPT_R, SCRYPT_P)


class WebRole(StrEnum):
    """What a person does with radtriage, and so which pages they see (`PAGES`)."""

    RADIOLOGIST = "radiologist"
    COMPLIANCE = "compliance"
    ADMIN = "admin"

    @property
    def purpose_of_use(self) -> str:
        """The v3-PurposeOfUse code recorded in the audit trail for this role's views."""
        return {WebRole.RADIOLOGIST: "TREAT", WebRole.COMPLIANCE: "HCOMPL", WebRole.ADMIN: "HSYSADMIN"}[self]


#: Which roles may open which page. Patient images and scores: the people who read studies (and administrators);
#: the audit trail: compliance officers (and administrators); the model's card and operations: everyone.
PAGES: dict[str, frozenset[WebRole]] = {
    "worklist": frozenset({WebRole.RADIOLOGIST, WebRole.ADMIN}),
    "study": frozenset({WebRole.RADIOLOGIST, WebRole.ADMIN}),
    "compliance": frozenset({WebRole.COMPLIANCE, WebRole.ADMIN}),
    "model": frozenset({WebRole.RADIOLOGIST, WebRole.COMPLIANCE, WebRole.ADMIN}),
}


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$N$r$p$<salt hex>$<key hex>`` for `password`, with a fresh random salt."""
    if not password:
        raise ValueError("the password is empty")
    salt = os.urandom(_SALT_BYTES)
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAX_SCRYPT_MEMORY, dklen=_KEY_BYTES
    )
    return f"scrypt${n}${r}${p}${salt.hex()}${key.hex()}"


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, n, r, p, salt, key = stored.split("$")
    if scheme != "scrypt":
        raise ValueError("not an scrypt hash")
    return int(n), int(r), int(p), bytes.fromhex(salt), bytes.fromhex(key)


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored` (compared in constant time). A malformed hash never matches."""
    try:
        n, r, p, salt, key = _parse_hash(stored)
        candidate = hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAX_SCRYPT_MEMORY, dklen=len(key)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(candidate, key)


@dataclass(frozen=True)
class WebUser:
    username: str
    role: WebRole
    password_hash: str
    display_name: str = ""

    def __post_init__(self) -> None:
        if not self.username or len(self.username) > 64 or not self.username.isprintable():
            raise ValueError("a username must be 1 to 64 printable characters")
        object.__setattr__(self, "role", WebRole(self.role))
        _parse_hash(self.password_hash)  # refuse a users file with a hash this code cannot check

    def may_open(self, page: str) -> bool:
        return self.role in PAGES[page]

    def to_dict(self) -> dict[str, str]:
        return {
            "username": self.username,
            "role": self.role.value,
            "display_name": self.display_name,
            "password_hash": self.password_hash,
        }


class UserDirectory:
    """The people who may sign in, read from a users file (or given directly, in tests)."""

    def __init__(self, users: Iterable[WebUser] = ()) -> None:
        self._users = {user.username: user for user in users}
        self._dummy_hash = hash_password(secrets.token_hex(8), n=_DUMMY_HASH_PARAMS[0])

    def __len__(self) -> int:
        return len(self._users)

    def __iter__(self) -> Iterator[WebUser]:
        return iter(self._users.values())

    def get(self, username: str) -> WebUser | None:
        return self._users.get(username)

    def authenticate(self, username: str, password: str) -> WebUser | None:
        """The user when the password is right, else None (same work whether or not the user exists)."""
        user = self._users.get(username)
        if user is None:
            verify_password(password, self._dummy_hash)
            return None
        return user if verify_password(password, user.password_hash) else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserDirectory:
        entries = data.get("users")
        if not isinstance(entries, list):
            raise ValueError('a users file holds {"users": [...]}')
        users = [
            WebUser(
                username=str(entry["username"]),
                role=WebRole(entry["role"]),
                password_hash=str(entry["password_hash"]),
                display_name=str(entry.get("display_name", "")),
            )
            for entry in entries
        ]
        if len({u.username for u in users}) != len(users):
            raise ValueError("a username appears twice in the users file")
        return cls(users)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> UserDirectory:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def add_user(path: Path, username: str, role: WebRole, password: str, display_name: str = "") -> None:
    """Add or replace one user in the users file at `path` (created when missing, readable by its owner only)."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"users": []}
    entries = [e for e in data.get("users", []) if e.get("username") != username]
    entries.append(WebUser(username, role, hash_password(password), display_name).to_dict())
    data["users"] = entries
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    path.chmod(0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radtriage.web.users", description="Manage web sign-in users.")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add or replace a user (asks for the password)")
    add.add_argument("--file", required=True, type=Path)
    add.add_argument("--username", required=True)
    add.add_argument("--role", required=True, choices=[r.value for r in WebRole])
    add.add_argument("--display-name", default="")
    args = parser.parse_args(argv)
    password = getpass.getpass("Password: ")
    if len(password) < 12:
        click.echo("refused: use at least 12 characters", err=True)
        return 2
    if getpass.getpass("Repeat: ") != password:
        click.echo("refused: the passwords differ", err=True)
        return 2
    add_user(args.file, args.username, WebRole(args.role), password, args.display_name)
    click.echo(f"user {args.username} ({args.role}) written to {args.file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
