"""Trusting CDS Clients (CDS Hooks 2.0, "Security and Safety"): the EHR signs a JWT for every call.

The JWT arrives as ``Authorization: Bearer <jwt>``. Its header names the algorithm (ES384 or RS384 here: CDS
Hooks says ES384 and RS384 SHALL be supported) and the key (``kid``), and may name the EHR's JWK Set URL (``jku``).
Its claims, all required: ``iss`` (the EHR, as registered), ``aud`` (the URL of the CDS service called, as the
discovery document gives it), ``exp`` (at most five minutes ahead), ``iat`` and ``jti`` (a nonce: a JWT seen
before is refused, replay protection). ``sub`` is optional (the client id), and must be a string when present.

Keys come from a registry this service is given (`CdsClientRegistry`, a JSON file), never from the network: a
``jku`` is accepted only when it is one of the URLs registered for that ``iss`` (CDS Hooks: the CDS service
SHOULD whitelist the jku), and the key is then the registered JWKS of that URL. Every refusal is a
`CdsAuthError` (401) whose text names no client or key, and is audited by the caller.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import jwt

from ..compliance.auth import JtiCache

#: CDS Hooks 2.0: "the CDS Service SHALL support ES384 and RS384" (nothing weaker, no HS*, no none).
ALGORITHMS: Final = ("ES384", "RS384")
MAX_LIFETIME_S: Final = 300
CLOCK_SKEW_S: Final = 30
REFUSED_TEXT: Final = "the CDS client's JWT is missing or not acceptable"


class CdsAuthError(Exception):
    """The call is not from a trusted CDS client (HTTP 401). `reason` is for the audit record only."""

    def __init__(self, reason: str) -> None:
        super().__init__(REFUSED_TEXT)
        self.reason = reason


@dataclass(frozen=True)
class CdsClient:
    """A trusted EHR: its ``iss``, its public keys, and the ``jku`` URLs whose keys those are."""

    issuer: str
    jwks: Mapping[str, Any] = field(repr=False)
    jku: tuple[str, ...] = ()
    name: str | None = None
    #: The FHIR servers this EHR may send as ``fhirServer`` (this service reads the Patient there, nowhere else).
    fhir_servers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        keys = self.jwks.get("keys")
        if not isinstance(keys, list) or not keys:
            raise ValueError(f"CDS client {self.issuer!r}: a JWKS needs a non-empty 'keys' list")
        for key in keys:
            if not isinstance(key, dict) or any(private in key for private in ("d", "p", "q")):
                raise ValueError(f"CDS client {self.issuer!r}: register public keys only")
            if key.get("kty") not in ("EC", "RSA"):
                raise ValueError(f"CDS client {self.issuer!r}: keys must be EC or RSA")


class CdsClientRegistry:
    """The EHRs allowed to call, from a JSON file::

    {"clients": [{"iss": "https://ehr.example", "jwks_file": "ehr.jwks.json",
                  "jku": ["https://ehr.example/.well-known/jwks.json"], "name": "Main EHR",
                  "fhir_servers": ["https://ehr.example/fhir"]}]}
    """

    def __init__(self, clients: list[CdsClient]) -> None:
        self._clients = {c.issuer: c for c in clients}

    def get(self, issuer: str) -> CdsClient | None:
        return self._clients.get(issuer)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: Path | None = None) -> CdsClientRegistry:
        clients = []
        for entry in data.get("clients", []):
            jwks = entry.get("jwks")
            if jwks is None and "jwks_file" in entry:
                jwks = json.loads(((base or Path.cwd()) / entry["jwks_file"]).read_text(encoding="utf-8"))
            clients.append(
                CdsClient(
                    str(entry["iss"]),
                    jwks or {},
                    tuple(entry.get("jku", ())),
                    entry.get("name"),
                    tuple(entry.get("fhir_servers", ())),
                )
            )
        return cls(clients)

    @classmethod
    def from_file(cls, path: str | Path) -> CdsClientRegistry:
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), base=path.parent)


@dataclass(frozen=True)
class VerifiedCall:
    """Who called: the EHR's ``iss`` (its registered name, if any) and the JWT's ``jti``."""

    issuer: str
    jti: str
    client_name: str | None = None


class CdsClientAuth:
    """Checks the JWT of each call against the registry (see the module docstring)."""

    def __init__(self, registry: CdsClientRegistry, jti_cache: JtiCache) -> None:
        self.registry = registry
        self.jti_cache = jti_cache

    def verify(self, authorization: str | None, audience: str) -> VerifiedCall:
        """The caller of a request to `audience` (the service's URL), or `CdsAuthError`."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise CdsAuthError("no bearer JWT")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise CdsAuthError("malformed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise CdsAuthError("algorithm not allowed")
        issuer = unverified.get("iss")
        client = self.registry.get(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise CdsAuthError("unknown issuer")
        jku = header.get("jku")
        if jku is not None and jku not in client.jku:
            raise CdsAuthError("jku not registered for this issuer")
        key = _key(client, header, algorithm)
        if key is None:
            raise CdsAuthError("no registered key matches")
        claims = _checked_claims(token, key, algorithm, audience, client.issuer)
        expires = datetime.fromtimestamp(claims["exp"] + CLOCK_SKEW_S, UTC)
        if not self.jti_cache.remember(f"cds|{client.issuer}|{claims['jti']}", expires):
            raise CdsAuthError("JWT replayed (jti seen before)")
        return VerifiedCall(client.issuer, str(claims["jti"]), client.name)


def _checked_claims(token: str, key: Any, algorithm: str, audience: str, issuer: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=audience,
            issuer=issuer,
            leeway=CLOCK_SKEW_S,
            options={"require": ["iss", "aud", "exp", "iat", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise CdsAuthError("JWT expired") from None
    except jwt.InvalidAudienceError:
        raise CdsAuthError("JWT audience is not this service") from None
    except jwt.InvalidSignatureError:
        raise CdsAuthError("JWT signature invalid") from None
    except jwt.PyJWTError as error:
        raise CdsAuthError(f"JWT invalid: {type(error).__name__}") from None
    if claims["exp"] > time.time() + MAX_LIFETIME_S + CLOCK_SKEW_S:
        raise CdsAuthError("JWT lives longer than five minutes")
    if not isinstance(claims["jti"], str) or not claims["jti"] or len(claims["jti"]) > 255:
        raise CdsAuthError("jti is not a usable nonce")
    if "sub" in claims and not isinstance(claims["sub"], str):
        raise CdsAuthError("sub is not a string")
    return claims


def _key(client: CdsClient, header: Mapping[str, Any], algorithm: str) -> Any:
    kid = header.get("kid")
    for jwk in client.jwks["keys"]:
        if kid is not None and jwk.get("kid") != kid:
            continue
        if jwk.get("alg") not in (None, algorithm):
            continue
        try:
            return jwt.PyJWK(jwk, algorithm=algorithm).key
        except jwt.PyJWTError:
            continue
    return None
