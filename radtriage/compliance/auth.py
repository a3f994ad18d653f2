"""Access control: OAuth 2.0 bearer tokens for the FHIR API, without Flask.

Tokens are issued by this service to registered clients through the SMART Backend Services flow (SMART App
Launch 2.x, "Backend Services" and "Asymmetric (public key) client authentication"): the client POSTs
``grant_type=client_credentials`` with a JWT client assertion (RFC 7523) signed with its private key, RS384 or
ES384; the service checks the assertion against the client's registered public keys (JWKS) and returns a
short-lived access token, itself a signed JWT (RFC 9068 style). Tokens from an external authorization server are
accepted too, checked against that issuer's JWKS, given as a file or a dict (this service fetches nothing).

Scopes use SMART v2 syntax (``system/DiagnosticReport.rs``; permissions ``c r u d s`` in that order); v1
``.read`` / ``.write`` / ``.*`` are accepted and read as ``rs`` / ``cud`` / ``cruds``. Roles (`Role`) name the
kinds of client (EHR, RIS, compliance officers' tools, administrators) and the most each may be granted.

Refusals are `AuthError`s: 401 for a missing, malformed, expired, forged, wrongly signed or replayed token or
assertion, or an unknown client (all with the same description, so that a caller learns nothing about which
clients exist); 403 for a valid token without the scope the request needs; 400 for token requests that are not
well formed (RFC 6749 5.2, including ``invalid_scope`` for scopes beyond the client's registration). Every
refusal and every issued token leaves an audit record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import codes
from .audit import (
    ACCESS_DENIED,
    AUTHENTICATION_FAILED,
    LOGIN,
    AuditContext,
    AuditOutcome,
    AuditRecord,
)

log = logging.getLogger(__name__)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: SMART Backend Services: servers SHALL support RS384 and ES384 for client assertions (and nothing weaker here).
ASSERTION_ALGORITHMS = ("RS384", "ES384")
#: SMART Backend Services: an assertion's exp is "no more than five minutes in the future".
MAX_ASSERTION_LIFETIME_S = 300
#: Clock difference tolerated between this service and its clients, in seconds.
CLOCK_SKEW_S = 30
DEFAULT_TOKEN_LIFETIME_S = 300
#: One description for every authentication failure: the response must not tell a caller which part failed.
AUTHENTICATION_FAILED_TEXT = "client authentication failed"
INVALID_TOKEN_TEXT = "the access token is missing, invalid or expired"


# ---------------------------------------------------------------------------------------------- errors


class AuthError(Exception):
    """A refused request. `status` is the HTTP status, `code` the OAuth error code, `description` safe to send."""

    def __init__(self, status: int, code: str, description: str, *, required_scope: str | None = None) -> None:
        super().__init__(f"{status} {code}: {description}")
        self.status = status
        self.code = code
        self.description = description
        self.required_scope = required_scope

    def www_authenticate(self, realm: str = "radtriage") -> str | None:
        """The ``WWW-Authenticate`` value for a resource-server refusal (RFC 6750 3)."""
        if self.status not in (401, 403):
            return None
        value = f'Bearer realm="{realm}"'
        if self.code in ("invalid_token", "insufficient_scope", "invalid_request"):
            value += f', error="{self.code}", error_description="{self.description}"'
        if self.required_scope:
            value += f', scope="{self.required_scope}"'
        return value

    def oauth_body(self) -> dict[str, str]:
        """The token endpoint's error body (RFC 6749 5.2)."""
        return {"error": self.code, "error_description": self.description}

    def operation_outcome(self) -> dict[str, Any]:
        """The FHIR API's error body: an OperationOutcome naming the refusal, never the request's content."""
        issue_code = {401: "login", 403: "forbidden"}.get(self.status, "invalid")
        return {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": issue_code,
                    "details": {
                        "coding": [{"system": codes.AUTH_ERROR_SYSTEM, "code": self.code}],
                        "text": self.description,
                    },
                }
            ],
        }


class InsecureConfiguration(ValueError):
    """Production settings without the secrets access control needs. The message names settings, not values."""


# ---------------------------------------------------------------------------------------------- scopes


_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_PERMISSION_ORDER = "cruds"


@dataclass(frozen=True)
class Scope:
    """One SMART resource scope: ``system/DiagnosticReport.rs`` → ("system", "DiagnosticReport", "rs")."""

    context: str
    resource_type: str
    permissions: str

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse v2 (``.cruds`` subsets, in order) or v1 (``.read``, ``.write``, ``.*``); raise ValueError."""
        context, slash, rest = text.partition("/")
        resource_type, dot, permissions = rest.rpartition(".")
        if not slash or not dot or context not in ("system", "user", "patient"):
            raise ValueError(f"not a SMART resource scope: {text!r}")
        if "?" in permissions:
            raise ValueError("granular (query-constrained) scopes are not supported")
        if not (resource_type == "*" or (resource_type[:1].isupper() and resource_type.isalpha())):
            raise ValueError(f"not a FHIR resource type: {resource_type!r}")
        permissions = _V1_PERMISSIONS.get(permissions, permissions)
        if not permissions or any(p not in _PERMISSION_ORDER for p in permissions):
            raise ValueError(f"unknown permissions in scope {text!r}")
        if "".join(sorted(permissions, key=_PERMISSION_ORDER.index)) != permissions or len(set(permissions)) != len(
            permissions
        ):
            raise ValueError(f"SMART v2 permissions must be in the order c, r, u, d, s without repeats: {text!r}")
        return cls(context, resource_type, permissions)

    def covers(self, other: Scope) -> bool:
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and set(other.permissions) <= set(self.permissions)
        )

    def __str__(self) -> str:
        return f"{self.context}/{self.resource_type}.{self.permissions}"


_INTERACTION_PERMISSION = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "update": "u",
    "patch": "u",
    "delete": "d",
    "search-type": "s",
    "search": "s",
}


def scope_for(resource_type: str, interaction: str) -> str:
    """The system scope a FHIR interaction needs: ``scope_for("DiagnosticReport", "search-type")`` →
    ``system/DiagnosticReport.s``."""
    return f"system/{resource_type}.{_INTERACTION_PERMISSION[interaction]}"


def parse_scopes(text: str) -> tuple[Scope, ...]:
    return tuple(Scope.parse(part) for part in text.split())


def covered(granted: Iterable[Scope], required: Scope) -> bool:
    return any(scope.covers(required) for scope in granted)


class Role(StrEnum):
    EHR = "ehr"
    RIS = "ris"
    COMPLIANCE = "compliance"
    ADMIN = "admin"
    #: A metrics scraper (radtriage.compliance.monitoring_access): aggregate figures only.
    MONITORING = "monitoring"


#: The most each role may be granted. A registration can narrow it, never widen it.
ROLE_SCOPES: dict[Role, tuple[str, ...]] = {
    # A report's reader may read what it links: the heatmap Binaries of its presentedForm and the orders
    # (ServiceRequest, ImagingStudy) its basedOn and imagingStudy name.
    Role.EHR: (
        "system/ImagingStudy.cr",
        "system/ServiceRequest.crs",
        "system/Task.rs",
        "system/DiagnosticReport.rs",
        "system/Observation.rs",
        "system/Binary.r",
        "system/Provenance.rs",
        "system/Device.rs",
    ),
    Role.RIS: (
        "system/ImagingStudy.cr",
        "system/ServiceRequest.crs",
        "system/Task.rs",
        "system/DiagnosticReport.rs",
        "system/Observation.rs",
        "system/Binary.r",
    ),
    Role.COMPLIANCE: ("system/AuditEvent.rs", "system/Provenance.rs", "system/Device.rs"),
    Role.ADMIN: ("system/*.cruds",),
    Role.MONITORING: ("system/MeasureReport.r",),
}

#: The purpose of use recorded for each role's requests (v3-PurposeOfUse).
ROLE_PURPOSE: dict[Role, str] = {
    Role.EHR: "TREAT",
    Role.RIS: "TREAT",
    Role.COMPLIANCE: "HCOMPL",
    Role.ADMIN: "HSYSADMIN",
    Role.MONITORING: "HSYSADMIN",
}


# ---------------------------------------------------------------------------------------------- keys


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def public_jwk(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> dict[str, str]:
    """The JWK of a public key, with ``kid`` = its RFC 7638 thumbprint."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        numbers = public_key.public_numbers()
        size = (public_key.curve.key_size + 7) // 8
        coordinate = {
            "x": base64.urlsafe_b64encode(numbers.x.to_bytes(size, "big")).rstrip(b"=").decode("ascii"),
            "y": base64.urlsafe_b64encode(numbers.y.to_bytes(size, "big")).rstrip(b"=").decode("ascii"),
        }
        members = {"crv": "P-384" if public_key.curve.name == "secp384r1" else public_key.curve.name, "kty": "EC"}
        members.update(coordinate)
        alg = "ES384"
    else:
        rsa_numbers = public_key.public_numbers()
        members = {"e": _b64url_uint(rsa_numbers.e), "kty": "RSA", "n": _b64url_uint(rsa_numbers.n)}
        alg = "RS384"
    thumbprint = hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":")).encode()).digest()
    kid = base64.urlsafe_b64encode(thumbprint).rstrip(b"=").decode("ascii")
    return {**members, "kid": kid, "alg": alg, "use": "sig"}


@dataclass(frozen=True)
class SigningKey:
    """This service's token-signing key: ES384 (EC P-384) or RS384 (RSA, 2048 bits or more)."""

    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = field(repr=False)
    kid: str
    algorithm: str

    @property
    def public_jwk(self) -> dict[str, str]:
        return {**public_jwk(self.private_key.public_key()), "kid": self.kid}


def _signing_key(private_key: Any, kid: str | None) -> SigningKey:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if private_key.curve.name != "secp384r1":
            raise ValueError("an EC signing key must be on curve P-384 (ES384)")
        algorithm = "ES384"
    elif isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < 2048:
            raise ValueError("an RSA signing key must have at least 2048 bits")
        algorithm = "RS384"
    else:
        raise ValueError("the signing key must be an EC P-384 or RSA private key")
    return SigningKey(private_key, kid or public_jwk(private_key.public_key())["kid"], algorithm)


def load_signing_key(source: str | bytes | Path, *, kid: str | None = None) -> SigningKey:
    """A PEM private key, given as its text or as a path to it (unencrypted PKCS#8 or traditional)."""
    if isinstance(source, Path) or (isinstance(source, str) and "-----BEGIN" not in source):
        data = Path(source).read_bytes()
    else:
        data = source.encode("ascii") if isinstance(source, str) else source
    return _signing_key(serialization.load_pem_private_key(data, password=None), kid)


def generate_signing_key() -> SigningKey:
    """A fresh ES384 key, for development and tests: tokens die with the process, and no key is ever a default."""
    return _signing_key(ec.generate_private_key(ec.SECP384R1()), None)


# ---------------------------------------------------------------------------------------------- registrations


def _load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _checked_jwks(jwks: Mapping[str, Any], owner: str) -> dict[str, Any]:
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError(f"{owner}: a JWKS needs a non-empty 'keys' list")
    for key in keys:
        if not isinstance(key, dict) or not key.get("kid"):
            raise ValueError(f"{owner}: every key needs a 'kid'")
        if any(private in key for private in ("d", "p", "q", "dp", "dq", "qi")):
            raise ValueError(f"{owner}: key {key['kid']!r} holds private key material; register public keys only")
        if key.get("kty") not in ("EC", "RSA"):
            raise ValueError(f"{owner}: key {key['kid']!r} is neither EC nor RSA")
    return {"keys": [dict(k) for k in keys]}


@dataclass(frozen=True)
class ClientRegistration:
    """A client allowed to ask for tokens: its id, role, public keys (JWKS) and, optionally, narrower scopes."""

    client_id: str
    role: Role
    jwks: Mapping[str, Any] = field(repr=False)
    scopes: tuple[str, ...] = ()
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))
        object.__setattr__(self, "jwks", _checked_jwks(self.jwks, f"client {self.client_id!r}"))
        role_scopes = parse_scopes(" ".join(ROLE_SCOPES[self.role]))
        for text in self.scopes:
            if not covered(role_scopes, Scope.parse(text)):
                raise ValueError(f"client {self.client_id!r}: scope {text!r} is beyond role {self.role.value!r}")

    @property
    def allowed_scopes(self) -> tuple[Scope, ...]:
        return parse_scopes(" ".join(self.scopes or ROLE_SCOPES[self.role]))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: Path | None = None) -> ClientRegistration:
        jwks = data.get("jwks")
        if jwks is None and "jwks_file" in data:
            jwks = _load_json((base or Path.cwd()) / data["jwks_file"])
        return cls(
            client_id=str(data["client_id"]),
            role=Role(data["role"]),
            jwks=jwks or {},
            scopes=tuple(data.get("scopes", ())),
            name=data.get("name"),
        )


@dataclass(frozen=True)
class ExternalIssuer:
    """An authorization server whose access tokens this service accepts, checked against its JWKS."""

    issuer: str
    jwks: Mapping[str, Any] = field(repr=False)
    audience: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "RS384", "ES256", "ES384")
    #: Role for tokens of clients that are not registered here; None refuses them.
    role: Role | None = None
    #: The most a token from this issuer is granted, whatever it claims (default: the role's scopes).
    allowed_scopes: tuple[str, ...] = ()
    client_claims: tuple[str, ...] = ("client_id", "azp", "sub")

    def __post_init__(self) -> None:
        object.__setattr__(self, "jwks", _checked_jwks(self.jwks, f"issuer {self.issuer!r}"))
        if self.role is not None:
            object.__setattr__(self, "role", Role(self.role))
        if "none" in (a.lower() for a in self.algorithms) or any(a.startswith("HS") for a in self.algorithms):
            raise ValueError("external issuers must sign with asymmetric keys")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: Path | None = None) -> ExternalIssuer:
        jwks = data.get("jwks")
        if jwks is None and "jwks_file" in data:
            jwks = _load_json((base or Path.cwd()) / data["jwks_file"])
        return cls(
            issuer=str(data["issuer"]),
            jwks=jwks or {},
            audience=data.get("audience"),
            algorithms=tuple(data.get("algorithms", cls.algorithms)),
            role=Role(data["role"]) if data.get("role") else None,
            allowed_scopes=tuple(data.get("allowed_scopes", ())),
        )


class ClientRegistry:
    """Registered clients and trusted external issuers, read from a JSON file (see the README)::

    {"clients": [{"client_id": "ris-main", "role": "ris", "jwks_file": "ris-main.jwks.json"}],
     "external_issuers": [{"issuer": "https://idp.example", "jwks_file": "idp.jwks.json",
                           "audience": "https://radtriage.example/fhir", "role": "ehr"}]}
    """

    def __init__(self, clients: Iterable[ClientRegistration] = (), issuers: Iterable[ExternalIssuer] = ()) -> None:
        self._clients = {c.client_id: c for c in clients}
        self._issuers = {i.issuer: i for i in issuers}

    def get(self, client_id: str) -> ClientRegistration | None:
        return self._clients.get(client_id)

    def issuer(self, issuer: str) -> ExternalIssuer | None:
        return self._issuers.get(issuer)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: Path | None = None) -> ClientRegistry:
        return cls(
            [ClientRegistration.from_dict(c, base=base) for c in data.get("clients", [])],
            [ExternalIssuer.from_dict(i, base=base) for i in data.get("external_issuers", [])],
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ClientRegistry:
        path = Path(path)
        return cls.from_dict(_load_json(path), base=path.parent)


# ---------------------------------------------------------------------------------------------- replay cache


class JtiCache(Protocol):
    def remember(self, key: str, expires_at: datetime) -> bool:
        """Record `key` until `expires_at`; False if it was already recorded (a replay)."""
        ...


class MemoryJtiCache:
    """Assertion ids seen by this process (enough for one process; use `SqlJtiCache` for several)."""

    def __init__(self) -> None:
        self._seen: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def remember(self, key: str, expires_at: datetime) -> bool:
        now = datetime.now(UTC)
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
            seen = self._seen.get(key)
            if seen is not None and seen > now:
                return False
            self._seen[key] = expires_at
            return True


class SqlJtiCache:
    """Assertion ids in the database (table ``oauth_seen_jti``): replays are refused across processes."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def remember(self, key: str, expires_at: datetime) -> bool:
        from sqlalchemy import delete, insert
        from sqlalchemy.exc import IntegrityError

        from ..app.storage.audit_tables import oauth_seen_jti

        now = datetime.now(UTC)
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(oauth_seen_jti).where(oauth_seen_jti.c.expires_at < now))
                connection.execute(insert(oauth_seen_jti).values(key=key, expires_at=expires_at))
        except IntegrityError:
            return False
        return True


# ---------------------------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class Principal:
    """Who a valid access token speaks for."""

    client_id: str
    role: Role | None
    scopes: tuple[Scope, ...]
    token_id: str | None
    issuer: str
    expires_at: datetime

    def allows(self, scope: str | Scope) -> bool:
        return covered(self.scopes, scope if isinstance(scope, Scope) else Scope.parse(scope))

    def audit_context(self, *, peer_address: str | None = None, request_id: str | None = None) -> AuditContext:
        return AuditContext(
            client_id=self.client_id,
            role=self.role.value if self.role else None,
            token_id=self.token_id,
            peer_address=peer_address,
            purpose_of_use=ROLE_PURPOSE[self.role] if self.role else None,
            request_id=request_id,
        )


AuditSink = Callable[[AuditRecord], object]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _clip(value: Any) -> str | None:
    """An attacker-supplied value made safe to record: a short string, or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:200]


class AccessControl:
    """Issues tokens (the token endpoint) and checks them (every FHIR request).

    `issuer` is this service's issuer URL (``iss`` of its tokens), `token_url` the token endpoint's absolute URL
    (the ``aud`` client assertions must carry) and `audience` the FHIR base URL (the ``aud`` of access tokens).
    `audit` receives one record per issued token and per refusal; when writing it fails, a token is not issued.
    """

    def __init__(
        self,
        *,
        issuer: str,
        token_url: str,
        audience: str,
        signing_key: SigningKey,
        registry: ClientRegistry,
        jti_cache: JtiCache | None = None,
        token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S,
        audit: AuditSink | None = None,
    ) -> None:
        self.issuer = issuer
        self.token_url = token_url
        self.audience = audience
        self.signing_key = signing_key
        self.registry = registry
        self.jti_cache: JtiCache = jti_cache or MemoryJtiCache()
        self.token_lifetime_s = token_lifetime_s
        self.audit = audit

    # ------------------------------------------------------------------ token endpoint

    def issue_token(self, form: Mapping[str, str], *, peer_address: str | None = None) -> dict[str, Any]:
        """Answer a token request (SMART Backend Services); raise `AuthError` to refuse it."""
        claimed_client: str | None = None
        try:
            if form.get("grant_type") != "client_credentials":
                raise AuthError(400, "unsupported_grant_type", "grant_type must be client_credentials")
            if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE or not form.get("client_assertion"):
                raise AuthError(400, "invalid_request", "a JWT client assertion is required (private_key_jwt)")
            assertion = form["client_assertion"]
            try:
                claimed_client = _clip(jwt.decode(assertion, options={"verify_signature": False}).get("iss"))
            except jwt.PyJWTError:
                claimed_client = None
            client, claims = self._check_assertion(assertion)
            requested = form.get("scope", "")
            if not requested.strip():
                raise AuthError(400, "invalid_request", "scope is required")
            try:
                scopes = parse_scopes(requested)
            except ValueError:
                raise AuthError(400, "invalid_scope", "a requested scope is not a supported SMART scope") from None
            allowed = client.allowed_scopes
            if any(s.context != "system" or not covered(allowed, s) for s in scopes):
                raise AuthError(400, "invalid_scope", "a requested scope is not granted to this client")
        except AuthError as error:
            self._audit_refusal(error, client_id=claimed_client, peer_address=peer_address, at_token_endpoint=True)
            raise
        token_id = uuid.uuid4().hex
        now = int(time.time())
        granted = " ".join(str(s) for s in scopes)
        access_token = jwt.encode(
            {
                "iss": self.issuer,
                "sub": client.client_id,
                "client_id": client.client_id,
                "aud": self.audience,
                "iat": now,
                "nbf": now,
                "exp": now + self.token_lifetime_s,
                "jti": token_id,
                "scope": granted,
                "role": client.role.value,
            },
            self.signing_key.private_key,
            algorithm=self.signing_key.algorithm,
            headers={"kid": self.signing_key.kid, "typ": "at+jwt"},
        )
        self._record(
            AuditRecord(
                LOGIN,
                client_id=client.client_id,
                role=client.role.value,
                token_id=token_id,
                peer_address=peer_address,
                purpose_of_use=ROLE_PURPOSE[client.role],
                details={"scope": granted, "assertion-jti": str(claims["jti"])[:200]},
            ),
            required=True,
        )
        return {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": self.token_lifetime_s,
            "scope": granted,
        }

    def _check_assertion(self, assertion: str) -> tuple[ClientRegistration, dict[str, Any]]:
        refused = AuthError(401, "invalid_client", AUTHENTICATION_FAILED_TEXT)
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise self._why(refused, "malformed assertion") from None
        algorithm = header.get("alg")
        if algorithm not in ASSERTION_ALGORITHMS:
            raise self._why(refused, "assertion algorithm not allowed")
        client_id = unverified.get("iss")
        client = self.registry.get(client_id) if isinstance(client_id, str) else None
        if client is None or unverified.get("sub") != client_id:
            raise self._why(refused, "unknown client")
        key = self._client_key(client, header)
        if key is None:
            raise self._why(refused, "no registered key matches the assertion")
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                key,
                algorithms=[algorithm],
                audience=self.token_url,
                issuer=client.client_id,
                leeway=CLOCK_SKEW_S,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise self._why(refused, "assertion expired") from None
        except jwt.InvalidSignatureError:
            raise self._why(refused, "assertion signature invalid") from None
        except jwt.PyJWTError as error:
            raise self._why(refused, f"assertion invalid: {type(error).__name__}") from None
        if claims["exp"] > time.time() + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S:
            raise self._why(refused, "assertion lives longer than five minutes")
        expires = datetime.fromtimestamp(claims["exp"] + CLOCK_SKEW_S, UTC)
        if not self.jti_cache.remember(f"{client.client_id}|{claims['jti']}", expires):
            raise self._why(refused, "assertion replayed (jti seen before)")
        return client, claims

    @staticmethod
    def _why(error: AuthError, reason: str) -> AuthError:
        # The reason goes to the audit record only; the response keeps the one generic description.
        error.__notes__ = [reason]
        return error

    @staticmethod
    def _client_key(client: ClientRegistration, header: Mapping[str, Any]) -> Any:
        kid = header.get("kid")
        for jwk in client.jwks["keys"]:
            if kid is not None and jwk.get("kid") != kid:
                continue
            if jwk.get("alg") not in (None, header["alg"]):
                continue
            try:
                return jwt.PyJWK(jwk, algorithm=header["alg"]).key
            except jwt.PyJWTError:
                continue
        return None

    # ------------------------------------------------------------------ resource server

    def authorize(
        self, headers: Mapping[str, str], required_scope: str | Scope, *, peer_address: str | None = None
    ) -> Principal:
        """The principal of a request that may do `required_scope`; raise `AuthError` (401/403) otherwise."""
        required = required_scope if isinstance(required_scope, Scope) else Scope.parse(required_scope)
        principal = self.authenticate(headers, peer_address=peer_address)
        if not principal.allows(required):
            error = AuthError(
                403, "insufficient_scope", "the access token does not grant this", required_scope=str(required)
            )
            self._record(
                AuditRecord.in_context(
                    ACCESS_DENIED,
                    principal.audit_context(peer_address=peer_address),
                    outcome=AuditOutcome.MINOR_FAILURE,
                    outcome_description=error.code,
                    details={"required-scope": str(required)},
                )
            )
            raise error
        return principal

    def authenticate(self, headers: Mapping[str, str], *, peer_address: str | None = None) -> Principal:
        """The principal of a request's bearer token, whatever it may do; raise `AuthError` (401) otherwise."""
        authorization = _header(headers, "Authorization") or ""
        scheme, _, token = authorization.strip().partition(" ")
        claimed: str | None = None
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise self._why(AuthError(401, "missing_token", "a bearer access token is required"), "no bearer token")
            token = token.strip()
            try:
                unverified = jwt.decode(token, options={"verify_signature": False})
                header = jwt.get_unverified_header(token)
            except jwt.PyJWTError:
                raise self._why(AuthError(401, "invalid_token", INVALID_TOKEN_TEXT), "malformed token") from None
            claimed = _clip(unverified.get("client_id") or unverified.get("sub"))
            issuer = unverified.get("iss")
            if issuer == self.issuer:
                return self._own_token(token)
            external = self.registry.issuer(issuer) if isinstance(issuer, str) else None
            if external is None:
                raise self._why(AuthError(401, "invalid_token", INVALID_TOKEN_TEXT), "unknown issuer")
            return self._external_token(token, header, external)
        except AuthError as error:
            self._audit_refusal(error, client_id=claimed, peer_address=peer_address, at_token_endpoint=False)
            raise

    def _decode(
        self, token: str, key: Any, algorithms: Sequence[str], issuer: str, audience: str | None
    ) -> dict[str, Any]:
        refused = AuthError(401, "invalid_token", INVALID_TOKEN_TEXT)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(algorithms),
                issuer=issuer,
                audience=audience,
                leeway=CLOCK_SKEW_S,
                options={"require": ["iss", "exp"] + (["aud"] if audience else []), "verify_aud": audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise self._why(refused, "token expired") from None
        except jwt.InvalidSignatureError:
            raise self._why(refused, "token signature invalid") from None
        except jwt.PyJWTError as error:
            raise self._why(refused, f"token invalid: {type(error).__name__}") from None
        return claims

    def _own_token(self, token: str) -> Principal:
        public = self.signing_key.private_key.public_key()
        claims = self._decode(token, public, [self.signing_key.algorithm], self.issuer, self.audience)
        client = self.registry.get(str(claims.get("client_id")))
        if client is None or not claims.get("jti"):
            # A client removed from the registry loses its tokens at once.
            raise self._why(AuthError(401, "invalid_token", INVALID_TOKEN_TEXT), "client no longer registered")
        try:
            scopes = parse_scopes(str(claims.get("scope", "")))
        except ValueError:
            raise self._why(AuthError(401, "invalid_token", INVALID_TOKEN_TEXT), "token scope unreadable") from None
        # Never more than the registration allows today, whatever the token says.
        scopes = tuple(s for s in scopes if covered(client.allowed_scopes, s))
        return Principal(
            client.client_id,
            client.role,
            scopes,
            str(claims["jti"]),
            self.issuer,
            datetime.fromtimestamp(claims["exp"], UTC),
        )

    def _external_token(self, token: str, header: Mapping[str, Any], issuer: ExternalIssuer) -> Principal:
        refused = AuthError(401, "invalid_token", INVALID_TOKEN_TEXT)
        algorithm = header.get("alg")
        if algorithm not in issuer.algorithms:
            raise self._why(refused, "token algorithm not allowed for this issuer")
        key = None
        for jwk in issuer.jwks["keys"]:
            if header.get("kid") not in (None, jwk.get("kid")):
                continue
            try:
                key = jwt.PyJWK(jwk, algorithm=algorithm).key
                break
            except jwt.PyJWTError:
                continue
        if key is None:
            raise self._why(refused, "no key of the issuer matches the token")
        claims = self._decode(token, key, [algorithm], issuer.issuer, issuer.audience or self.audience)
        client_id = next((claims[c] for c in issuer.client_claims if isinstance(claims.get(c), str)), None)
        if client_id is None:
            raise self._why(refused, "token names no client")
        client = self.registry.get(client_id)
        role = client.role if client else issuer.role
        if role is None:
            raise self._why(refused, "client of external token not registered and issuer grants no role")
        raw = claims.get("scope", claims.get("scp", ""))
        texts = raw.split() if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else []
        limit = client.allowed_scopes if client else parse_scopes(" ".join(issuer.allowed_scopes or ROLE_SCOPES[role]))
        scopes = []
        for text in texts:
            try:
                scope = Scope.parse(text)
            except ValueError:
                continue  # other scopes (openid, profile, ...) mean nothing here
            if covered(limit, scope):
                scopes.append(scope)
        jti = claims.get("jti")
        return Principal(
            client_id,
            role,
            tuple(scopes),
            str(jti) if jti else None,
            issuer.issuer,
            datetime.fromtimestamp(claims["exp"], UTC),
        )

    # ------------------------------------------------------------------ discovery

    def public_jwks(self) -> dict[str, Any]:
        """This service's token-signing public key, for resource servers that check its tokens themselves."""
        return {"keys": [self.signing_key.public_jwk]}

    def smart_configuration(self) -> dict[str, Any]:
        """``.well-known/smart-configuration`` (SMART App Launch 2.x, Conformance) for backend services."""
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_url,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "scopes_supported": sorted({s for scopes in ROLE_SCOPES.values() for s in scopes}),
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        }

    # ------------------------------------------------------------------ auditing

    def _audit_refusal(
        self, error: AuthError, *, client_id: str | None, peer_address: str | None, at_token_endpoint: bool
    ) -> None:
        reason = "; ".join(getattr(error, "__notes__", [])) or error.code
        details = {"status": str(error.status), "error": error.code, "reason": reason[:200]}
        details["where"] = "token endpoint" if at_token_endpoint else "resource request"
        kind = ACCESS_DENIED if error.code == "invalid_scope" else AUTHENTICATION_FAILED
        registered = client_id is not None and self.registry.get(client_id) is not None
        self._record(
            AuditRecord(
                kind,
                outcome=AuditOutcome.MINOR_FAILURE,
                outcome_description=error.code,
                # A claimed id that is not registered is recorded as a detail, not as a known agent.
                client_id=client_id if registered else None,
                peer_address=peer_address,
                details={**details, **({"claimed-client": client_id} if client_id and not registered else {})},
            )
        )

    def _record(self, record: AuditRecord, *, required: bool = False) -> None:
        if self.audit is None:
            return
        try:
            self.audit(record)
        except Exception:
            log.exception("could not write the audit record for %s", record.kind.code)
            if required:
                raise


# ---------------------------------------------------------------------------------------------- production


#: Settings that production mode requires, and why.
PRODUCTION_SECRETS: dict[str, str] = {
    "auth_signing_key": "the private key (PEM path) that signs access tokens",
    "auth_issuer": "this service's issuer URL",
    "auth_clients": "the client registry (JSON path) with each client's public keys",
}


def check_production_secrets(settings: Mapping[str, Any] | Any) -> None:
    """Refuse to start in production mode without the secrets access control needs; nothing has a default.

    `settings` is a mapping or an object with attributes (the `Settings` dataclass). Only ``mode ==
    "production"`` is checked. The error names the missing or unusable settings, never their values.
    """

    def get(name: str) -> Any:
        return settings.get(name) if isinstance(settings, Mapping) else getattr(settings, name, None)

    if str(get("mode") or "").lower() != "production":
        return
    problems = [f"{name} is not set ({why})" for name, why in PRODUCTION_SECRETS.items() if not get(name)]
    if get("auth_required") is False:
        problems.append("auth_required must be true in production")
    key = get("auth_signing_key")
    if key:
        try:
            load_signing_key(key)
        except (OSError, ValueError, TypeError):
            problems.append("auth_signing_key cannot be read as an EC P-384 or RSA (2048+ bits) private key")
    clients = get("auth_clients")
    if clients:
        try:
            ClientRegistry.from_file(clients)
        except (OSError, ValueError, KeyError, TypeError):
            problems.append("auth_clients cannot be read as a client registry")
    if get("study_source") == "dicomweb" and get("dicomweb_username") and not get("dicomweb_password"):
        problems.append("dicomweb_password is not set although dicomweb_username is")
    if problems:
        raise InsecureConfiguration("production mode refuses to start: " + "; ".join(problems))
