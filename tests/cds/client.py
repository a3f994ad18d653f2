"""A minimal CDS Hooks 2.0 client, written from the specification (https://cds-hooks.hl7.org/2.0/), as an EHR
would call a CDS service: discovery, hook calls with a signed JWT per call, and feedback.

It follows the text literally: the JWT is signed with the EHR's private key (ES384), its header carries ``kid``
(and ``jku`` when the EHR publishes one); its claims are ``iss`` (the EHR), ``aud`` (the service endpoint as
discovery gives it), ``exp`` (five minutes at most), ``iat``, ``jti`` (a fresh nonce) and ``sub`` (the client
id). Requests are ``application/json`` over real HTTP with `requests`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from radtriage.compliance.auth import public_jwk


@dataclass
class CdsHooksClient:
    services_url: str  # "<base>/cds-services"
    issuer: str = "https://ehr.example.org"
    jku: str | None = None
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1()), repr=False
    )

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.private_key.public_key())]}

    def registration(self, **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"iss": self.issuer, "jwks": self.jwks, **extra}
        if self.jku:
            entry.setdefault("jku", [self.jku])
        return entry

    def token(self, service_id: str, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "ehr-client-1",
            "aud": f"{self.services_url}/{service_id}",
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        headers = {"kid": public_jwk(self.private_key.public_key())["kid"], "typ": "JWT"}
        if self.jku:
            headers["jku"] = self.jku
        return jwt.encode(body, self.private_key, algorithm="ES384", headers=headers)

    def discover(self) -> requests.Response:
        return requests.get(self.services_url, headers={"Accept": "application/json"}, timeout=30)

    def call(
        self,
        service_id: str,
        hook: str,
        context: dict[str, Any],
        *,
        prefetch: dict[str, Any] | None = None,
        fhir_server: str | None = None,
        fhir_authorization: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> requests.Response:
        request: dict[str, Any] = {"hookInstance": str(uuid.uuid4()), "hook": hook, "context": context}
        if fhir_server:
            request["fhirServer"] = fhir_server
        if fhir_authorization:
            request["fhirAuthorization"] = fhir_authorization
        if prefetch is not None:
            request["prefetch"] = prefetch
        return self.post(f"{self.services_url}/{service_id}", request, token or self.token(service_id))

    def feedback(self, service_id: str, entries: list[dict[str, Any]], token: str | None = None) -> requests.Response:
        return self.post(
            f"{self.services_url}/{service_id}/feedback", {"feedback": entries}, token or self.token(service_id)
        )

    @staticmethod
    def post(url: str, body: Any, token: str | None) -> requests.Response:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) else requests.models.complexjson.dumps(body)
        return requests.post(url, data=data, headers=headers, timeout=30)
