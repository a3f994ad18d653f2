"""A SMART Backend Services client for tests: its own key pair, its registration, and tokens from the real
``POST /auth/token`` endpoint (client credentials with a signed JWT assertion, RFC 7523)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient

from radtriage.compliance.auth import CLIENT_ASSERTION_TYPE, public_jwk

#: The Flask test client's host: the service's base URL in these tests, so the token endpoint's URL (the
#: audience every assertion names) is this.
BASE_URL = "http://localhost"
TOKEN_URL = f"{BASE_URL}/auth/token"


@dataclass
class SmartClient:
    """A registered backend client: id, role and a fresh ES384 key whose public half is registered."""

    client_id: str
    role: str
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1()), repr=False
    )

    def registration(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "role": self.role,
            "jwks": {"keys": [public_jwk(self.private_key.public_key())]},
        }

    def assertion(self, audience: str = TOKEN_URL) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        }
        kid = public_jwk(self.private_key.public_key())["kid"]
        return jwt.encode(claims, self.private_key, algorithm="ES384", headers={"kid": kid})

    def token(self, http: FlaskClient, scope: str, *, remote_addr: str = "192.0.2.10") -> str:
        """An access token from the service's token endpoint (fails the test if it is refused)."""
        response = http.post(
            "/auth/token",
            data={
                "grant_type": "client_credentials",
                "scope": scope,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": self.assertion(),
            },
            environ_base={"REMOTE_ADDR": remote_addr},
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        token: str = response.get_json()["access_token"]
        return token


def write_registry(path: Path, *clients: SmartClient) -> Path:
    """The client registry file the service reads (settings ``auth_clients``)."""
    path.write_text(json.dumps({"clients": [c.registration() for c in clients]}), encoding="utf-8")
    return path


def access_settings(registry: Path) -> dict[str, Any]:
    """Settings that turn access control on, with a signing key generated for the process (no key configured)."""
    return {"auth_required": True, "auth_clients": str(registry), "base_url": BASE_URL}
