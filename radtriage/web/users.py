"""People who sign in to the web pages: a users file, scrypt password hashes, and the roles people can hold.

The FHIR API's access control (`radtriage.compliance.auth`) is for machines: clients with keys and OAuth tokens.
People sign in with a user name and a password, checked against a JSON file that an administrator keeps::

    {"users": [{"username": "adoe", "role": "radiologist", "display_name": "Dr A. Doe",
                "password_hash": "scrypt$16384$8$1$<salt hex>$<hash hex>"}]}

Manage it with ``radtriage users add|list|disable|enable|reset-password|unlock USERNAME`` (`radtriage.web.
cli_commands`); passwords have at least `MIN_PASSWORD_LENGTH` (12) characters. There is no default user and no
default password. An entry may carry ``"disabled": true``: that person cannot sign in, and their sessions end.

Passwords are hashed with scrypt (RFC 7914) through `hashlib.scrypt`: a memory-hard key derivation function,
16-byte random salt per password, parameters stored with each hash so they can be raised later.
"""

from __future__ import annotations

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

#: The shortest password accepted (NIST SP 800-63B asks for at least 8; 12 is the OWASP recommendation).
MIN_PASSWORD_LENGTH = 12
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
    disabled: bool = False

    def __post_init__(self) -> None:
        if not self.username or len(self.username) > 64 or not self.username.isprintable():
            raise ValueError("a username must be 1 to 64 printable characters")
        object.__setattr__(self, "role", WebRole(self.role))
        _parse_hash(self.password_hash)  # refuse a users file with a hash this code cannot check

    def may_open(self, page: str) -> bool:
        return self.role in PAGES[page]

    @property
    def password_stamp(self) -> str:
        """A short digest of the password hash, kept in the session: a changed password ends older sessions even
        where the database could not be told (the hash itself never leaves the server)."""
        return hashlib.sha256(self.password_hash.encode("ascii", "replace")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "username": self.username,
            "role": self.role.value,
            "display_name": self.display_name,
            "password_hash": self.password_hash,
        }
        if self.disabled:
            entry["disabled"] = True
        return entry


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
        """An enabled user by name (a disabled one is as good as absent for signing in and sessions)."""
        user = self._users.get(username)
        return user if user is not None and not user.disabled else None

    def authenticate(self, username: str, password: str) -> WebUser | None:
        """The user when the password is right, else None (same work whether or not the user exists)."""
        user = self.get(username)
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
                disabled=entry.get("disabled") is True,
            )
            for entry in entries
        ]
        if len({u.username for u in users}) != len(users):
            raise ValueError("a username appears twice in the users file")
        return cls(users)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> UserDirectory:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


class UsersFileError(ValueError):
    """The users file cannot be changed as asked (unknown user, short password, unreadable file)."""


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsersFileError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def _read_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        UserDirectory.from_dict(data)  # never rewrite a file this code could not read back
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsersFileError(f"the users file {path} cannot be read ({type(error).__name__}: {error})") from None
    return list(data["users"])


def _write_entries(path: Path, entries: list[dict[str, Any]]) -> None:
    # Write beside and rename: a running server never reads a half-written file.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    temporary.write_text(json.dumps({"users": entries}, indent=2) + "\n", encoding="utf-8")
    temporary.chmod(0o600)
    os.replace(temporary, path)


def read_users(path: Path) -> list[WebUser]:
    """Every user in the file, disabled ones included."""
    return [WebUser(**{**entry, "disabled": entry.get("disabled") is True}) for entry in _read_entries(path)]


def add_user(path: Path, username: str, role: WebRole, password: str, display_name: str = "") -> None:
    """Add or replace one user in the users file at `path` (created when missing, readable by its owner only)."""
    entries = [e for e in _read_entries(path) if e.get("username") != username]
    entries.append(WebUser(username, role, hash_password(password), display_name).to_dict())
    _write_entries(path, entries)


def update_user(path: Path, username: str, *, disabled: bool | None = None, password: str | None = None) -> WebUser:
    """Disable, enable or set a new password for one existing user; the user as written."""
    entries = _read_entries(path)
    index = next((i for i, e in enumerate(entries) if e.get("username") == username), None)
    if index is None:
        raise UsersFileError(f"there is no user {username!r} in {path}")
    entry = entries[index]
    if disabled is not None:
        entry = {k: v for k, v in entry.items() if k != "disabled"} | ({"disabled": True} if disabled else {})
    if password is not None:
        entry = {**entry, "password_hash": hash_password(password)}
    entries[index] = entry
    _write_entries(path, entries)
    return WebUser(**{**entry, "disabled": entry.get("disabled") is True})
