"""Access control over real HTTP requests (Flask test client): SMART Backend Services tokens, scopes, refusals.

Attacks tried: expired, too long-lived, wrongly addressed, forged (another key under the client's kid),
algorithm-confusion (HS256 keyed with the public key), unsigned (alg none), replayed (same jti) and malformed
assertions; an unknown client; iss/sub mismatch; scopes beyond the registration or of another context; missing,
non-bearer, garbage, forged, expired and wrongly addressed access tokens; a token of a client since removed;
tokens of an external issuer signed with the wrong key or naming an unregistered client. Each is refused with
401/403 (400 for malformed token requests, RFC 6749 5.2), audited, and the response never says which check failed.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, jsonify
from flask.testing import FlaskClient
from sqlalchemy import Engine

from radtriage.compliance.audit import current_audit_context
from radtriage.compliance.audit_store import AuditLog
from radtriage.compliance.auth import (
    CLIENT_ASSERTION_TYPE,
    AccessControl,
    ClientRegistration,
    ClientRegistry,
    ExternalIssuer,
    InsecureConfiguration,
    Role,
    Scope,
    SqlJtiCache,
    check_production_secrets,
    generate_signing_key,
    load_signing_key,
    parse_scopes,
    public_jwk,
    scope_for,
)
from radtriage.compliance.flask_auth import (
    auth_blueprint,
    current_principal,
    install_access_control,
    require_scope,
)

TOKEN_URL = "http://localhost/auth/token"
FHIR_BASE = "http://localhost/fhir"
ISSUER = "http://localhost/auth"
EXTERNAL_ISSUER = "https://idp.hospital.test"


class Key:
    def __init__(self, private: Any) -> None:
        self.private = private
        self.jwk = public_jwk(private.public_key())
        self.kid = self.jwk["kid"]
        self.alg = self.jwk["alg"]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {
        "ris": Key(ec.generate_private_key(ec.SECP384R1())),
        "compliance": Key(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "attacker": Key(ec.generate_private_key(ec.SECP384R1())),
        "idp": Key(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    }


@pytest.fixture
def audit_log(sqlite_engine: Engine) -> AuditLog:  # the auth tests need one backend; SqlJtiCache runs on both
    return AuditLog(sqlite_engine)


@pytest.fixture
def access(keys: dict[str, Key], audit_log: AuditLog) -> AccessControl:
    registry = ClientRegistry(
        [
            ClientRegistration("ris-1", Role.RIS, keys["ris"].jwks()),
            ClientRegistration("compliance-1", Role.COMPLIANCE, keys["compliance"].jwks()),
            ClientRegistration("narrow-ehr", Role.EHR, keys["ris"].jwks(), scopes=("system/DiagnosticReport.rs",)),
            ClientRegistration("ehr-ext", Role.EHR, keys["attacker"].jwks()),
        ],
        [ExternalIssuer(EXTERNAL_ISSUER, keys["idp"].jwks(), audience=FHIR_BASE)],
    )
    return AccessControl(
        issuer=ISSUER,
        token_url=TOKEN_URL,
        audience=FHIR_BASE,
        signing_key=generate_signing_key(),
        registry=registry,
        jti_cache=SqlJtiCache(audit_log.engine),
        audit=audit_log.record,
    )


@pytest.fixture
def client(access: AccessControl) -> FlaskClient:
    app = Flask("test")
    install_access_control(app, access)
    app.register_blueprint(auth_blueprint(), url_prefix="/auth")

    @app.get("/fhir/DiagnosticReport")
    @require_scope("system/DiagnosticReport.s")
    def search_reports() -> Any:
        principal, context = current_principal(), current_audit_context()
        assert principal is not None and context is not None
        return jsonify(client=principal.client_id, role=context.role, token=context.token_id, peer=context.peer_address)

    @app.get("/fhir/AuditEvent")
    @require_scope("system/AuditEvent.s")
    def search_audit() -> Any:
        return jsonify(ok=True)

    @app.post("/fhir/ImagingStudy")
    @require_scope("system/ImagingStudy.c")
    def create_study() -> Any:
        return jsonify(ok=True), 201

    return app.test_client()


def assertion(
    key: Key,
    client_id: str = "ris-1",
    *,
    aud: str = TOKEN_URL,
    exp_in: int = 120,
    jti: str | None = None,
    iss: str | None = None,
    sub: str | None = None,
    kid: str | None = None,
    drop: tuple[str, ...] = (),
) -> str:
    now = int(time.time())
    claims = {
        "iss": iss or client_id,
        "sub": sub or client_id,
        "aud": aud,
        "exp": now + exp_in,
        "jti": jti or uuid.uuid4().hex,
    }
    for name in drop:
        claims.pop(name)
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": kid or key.kid})


def request_token(
    client: FlaskClient, client_assertion: str, scope: str = "system/DiagnosticReport.rs", **form: str
) -> Any:
    data = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": client_assertion,
        **form,
    }
    return client.post("/auth/token", data=data, environ_base={"REMOTE_ADDR": "192.0.2.44"})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def last_records(log: AuditLog, count: int = 1) -> list[dict[str, Any]]:
    found, _ = log.search(limit=count)
    return [e.resource() for e in found]


def details(resource: dict[str, Any]) -> dict[str, str]:
    return {d["type"]: d["valueString"] for e in resource.get("entity", []) for d in e.get("detail", [])}


# ---------------------------------------------------------------------------------------------- the happy path


def test_a_good_assertion_gets_a_token_that_opens_the_api(
    client: FlaskClient, keys: dict[str, Key], audit_log: AuditLog
) -> None:
    response = request_token(client, assertion(keys["ris"]))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Pragma"] == "no-cache"
    body = response.get_json()
    assert (
        body["token_type"] == "bearer" and body["expires_in"] == 300 and body["scope"] == "system/DiagnosticReport.rs"
    )
    login = last_records(audit_log)[0]
    assert login["subtype"][-1]["code"] == "login" and login["outcome"] == "0"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == "ris-1" and claims["role"] == "ris"
    assert f"urn:ietf:params:oauth:jti:{claims['jti']}" in json.dumps(login)

    api = client.get(
        "/fhir/DiagnosticReport", headers=bearer(body["access_token"]), environ_base={"REMOTE_ADDR": "192.0.2.44"}
    )
    assert api.status_code == 200
    assert api.get_json() == {"client": "ris-1", "role": "ris", "token": claims["jti"], "peer": "192.0.2.44"}


def test_rs384_and_v1_scopes_are_accepted(client: FlaskClient, keys: dict[str, Key]) -> None:
    response = request_token(client, assertion(keys["compliance"], "compliance-1"), scope="system/AuditEvent.read")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["scope"] == "system/AuditEvent.rs"
    token = response.get_json()["access_token"]
    assert client.get("/fhir/AuditEvent", headers=bearer(token)).status_code == 200


def test_discovery_documents(client: FlaskClient, access: AccessControl) -> None:
    config = client.get("/auth/.well-known/smart-configuration").get_json()
    assert (
        config["token_endpoint"] == TOKEN_URL and "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    )
    assert set(config["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    jwks = client.get("/auth/jwks").get_json()
    assert [k["kid"] for k in jwks["keys"]] == [access.signing_key.kid] and "d" not in jwks["keys"][0]


# ---------------------------------------------------------------------------------------------- token endpoint attacks


def _hs256_with_public_key(keys: dict[str, Key]) -> str:
    # Algorithm confusion: sign with HMAC keyed by the client's *public* key, hoping the server uses it as a secret.
    pem = (
        keys["ris"]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    now = int(time.time())
    claims = {"iss": "ris-1", "sub": "ris-1", "aud": TOKEN_URL, "exp": now + 60, "jti": uuid.uuid4().hex}
    header = {"alg": "HS256", "typ": "JWT", "kid": keys["ris"].kid}

    def b64(data: bytes) -> str:
        import base64

        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    import hashlib
    import hmac

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def _unsigned(keys: dict[str, Key]) -> str:
    now = int(time.time())
    claims = {"iss": "ris-1", "sub": "ris-1", "aud": TOKEN_URL, "exp": now + 60, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, "", algorithm="none")


#: attack -> (how to make the assertion, the reason the audit record must give)
ASSERTION_ATTACKS: dict[str, tuple[Any, str]] = {
    "expired": (lambda k: assertion(k["ris"], exp_in=-120), "assertion expired"),
    "lives-too-long": (lambda k: assertion(k["ris"], exp_in=3600), "longer than five minutes"),
    "wrong-audience": (lambda k: assertion(k["ris"], aud="http://elsewhere.test/token"), "InvalidAudienceError"),
    "forged-with-another-key": (lambda k: assertion(k["attacker"], kid=k["ris"].kid), "signature invalid"),
    "signed-with-another-registered-key": (
        lambda k: assertion(k["compliance"], kid=k["ris"].kid),
        "no registered key matches",
    ),
    "alg-confusion-hs256": (_hs256_with_public_key, "algorithm not allowed"),
    "alg-none": (_unsigned, "algorithm not allowed"),
    "unknown-client": (lambda k: assertion(k["attacker"], "no-such-client"), "unknown client"),
    "iss-sub-mismatch": (lambda k: assertion(k["ris"], sub="compliance-1"), "unknown client"),
    "no-jti": (lambda k: assertion(k["ris"], drop=("jti",)), "MissingRequiredClaimError"),
    "malformed": (lambda k: "not.a.jwt", "malformed assertion"),
}


@pytest.mark.parametrize("attack", sorted(ASSERTION_ATTACKS))
def test_a_bad_assertion_is_refused_without_saying_why_and_audited(
    client: FlaskClient, keys: dict[str, Key], audit_log: AuditLog, attack: str
) -> None:
    make, reason = ASSERTION_ATTACKS[attack]
    response = request_token(client, make(keys))
    assert response.status_code == 401
    assert response.get_json() == {"error": "invalid_client", "error_description": "client authentication failed"}
    record = last_records(audit_log)[0]
    assert record["subtype"][-1]["code"] == "authentication-failed" and record["outcome"] == "4"
    assert details(record)["where"] == "token endpoint" and reason in details(record)["reason"]
    assert audit_log.verify().ok


def test_a_replayed_assertion_is_refused(client: FlaskClient, keys: dict[str, Key], audit_log: AuditLog) -> None:
    once = assertion(keys["ris"], jti="same-jti")
    assert request_token(client, once).status_code == 200
    replay = request_token(client, once)
    assert replay.status_code == 401 and replay.get_json()["error"] == "invalid_client"
    again = request_token(client, assertion(keys["ris"], jti="same-jti"))  # a new assertion reusing the jti
    assert again.status_code == 401
    assert "replayed" in details(last_records(audit_log)[0])["reason"]


def test_unknown_client_and_bad_signature_look_the_same(client: FlaskClient, keys: dict[str, Key]) -> None:
    unknown = request_token(client, assertion(keys["attacker"], "no-such-client"))
    forged = request_token(client, assertion(keys["attacker"], kid=keys["ris"].kid))
    assert unknown.status_code == forged.status_code == 401
    assert unknown.get_data() == forged.get_data()


@pytest.mark.parametrize(
    ("scope", "form", "status", "error"),
    [
        ("system/AuditEvent.rs", {}, 400, "invalid_scope"),  # beyond the RIS role
        ("system/DiagnosticReport.cruds", {}, 400, "invalid_scope"),  # more permissions than granted
        ("patient/DiagnosticReport.rs", {}, 400, "invalid_scope"),  # not a backend-service context
        ("system/Observation.rs?category=imaging", {}, 400, "invalid_scope"),
        ("launch openid", {}, 400, "invalid_scope"),
        ("", {}, 400, "invalid_request"),
        ("system/DiagnosticReport.rs", {"grant_type": "password"}, 400, "unsupported_grant_type"),
        ("system/DiagnosticReport.rs", {"client_assertion_type": "secret"}, 400, "invalid_request"),
    ],
)
def test_a_bad_token_request_is_refused_and_audited(
    client: FlaskClient,
    keys: dict[str, Key],
    audit_log: AuditLog,
    scope: str,
    form: dict[str, str],
    status: int,
    error: str,
) -> None:
    response = request_token(client, assertion(keys["ris"]), scope=scope, **form)
    assert response.status_code == status and response.get_json()["error"] == error
    record = last_records(audit_log)[0]
    assert record["outcome"] == "4" and record["outcomeDesc"] == error


def test_a_narrowed_registration_limits_the_role(client: FlaskClient, keys: dict[str, Key]) -> None:
    assert request_token(client, assertion(keys["ris"], "narrow-ehr")).status_code == 200
    wider = request_token(client, assertion(keys["ris"], "narrow-ehr"), scope="system/Task.rs")
    assert wider.status_code == 400 and wider.get_json()["error"] == "invalid_scope"


def test_the_token_endpoint_wants_a_form(client: FlaskClient) -> None:
    response = client.post("/auth/token", json={"grant_type": "client_credentials"})
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"


# ---------------------------------------------------------------------------------------------- resource server


def _token(client: FlaskClient, keys: dict[str, Key], scope: str = "system/DiagnosticReport.rs") -> str:
    response = request_token(client, assertion(keys["ris"]), scope=scope)
    assert response.status_code == 200
    token: str = response.get_json()["access_token"]
    return token


def _own_token(access: AccessControl, **changes: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "ris-1",
        "client_id": "ris-1",
        "aud": FHIR_BASE,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "scope": "system/DiagnosticReport.rs",
        "role": "ris",
    }
    key = changes.pop("key", access.signing_key.private_key)
    claims.update(changes)
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": access.signing_key.kid})


@pytest.mark.parametrize(
    "headers_for",
    [
        lambda a, k: {},
        lambda a, k: {"Authorization": "Basic cmlzOnNlY3JldA=="},
        lambda a, k: {"Authorization": "Bearer"},
        lambda a, k: bearer("garbage"),
        lambda a, k: bearer(_own_token(a, key=k["attacker"].private)),  # forged: right claims, wrong key
        lambda a, k: bearer(_own_token(a, exp=int(time.time()) - 120)),  # expired
        lambda a, k: bearer(_own_token(a, aud="http://other.test/fhir")),  # meant for another server
        lambda a, k: bearer(_own_token(a, iss="http://evil.test")),  # unknown issuer
        lambda a, k: bearer(_own_token(a, client_id="ghost", sub="ghost")),  # not (or no longer) registered
        lambda a, k: bearer(_own_token(a, jti=None)),
    ],
    ids=[
        "none",
        "basic",
        "empty-bearer",
        "garbage",
        "forged",
        "expired",
        "wrong-aud",
        "unknown-iss",
        "ghost",
        "no-jti",
    ],
)
def test_a_request_without_a_valid_token_gets_401(
    client: FlaskClient, access: AccessControl, keys: dict[str, Key], audit_log: AuditLog, headers_for: Any
) -> None:
    response = client.get("/fhir/DiagnosticReport", headers=headers_for(access, keys))
    assert response.status_code == 401
    assert response.mimetype == "application/fhir+json"
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="radtriage"')
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "login"
    record = last_records(audit_log)[0]
    assert record["subtype"][-1]["code"] == "authentication-failed" and details(record)["where"] == "resource request"


def test_a_token_without_the_scope_gets_403_and_is_audited(
    client: FlaskClient, keys: dict[str, Key], audit_log: AuditLog
) -> None:
    token = _token(client, keys)  # DiagnosticReport.rs only
    response = client.post("/fhir/ImagingStudy", headers=bearer(token))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="system/ImagingStudy.c"' in response.headers["WWW-Authenticate"]
    assert response.get_json()["issue"][0]["code"] == "forbidden"
    record = last_records(audit_log)[0]
    assert record["subtype"][-1]["code"] == "access-denied"
    assert [a["who"]["identifier"]["value"] for a in record["agent"] if "identifier" in a["who"]][0] == "ris-1"


def test_a_removed_client_loses_its_tokens(client: FlaskClient, access: AccessControl, keys: dict[str, Key]) -> None:
    token = _token(client, keys)
    assert client.get("/fhir/DiagnosticReport", headers=bearer(token)).status_code == 200
    access.registry = ClientRegistry([], [])
    assert client.get("/fhir/DiagnosticReport", headers=bearer(token)).status_code == 401


def _external_token(keys: dict[str, Key], key: str = "idp", **changes: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": EXTERNAL_ISSUER,
        "aud": FHIR_BASE,
        "exp": now + 300,
        "client_id": "ehr-ext",
        "scope": "openid system/DiagnosticReport.rs system/AuditEvent.rs",
        "jti": uuid.uuid4().hex,
    }
    claims.update(changes)
    signer = keys[key]
    return jwt.encode(claims, signer.private, algorithm=signer.alg, headers={"kid": keys["idp"].kid})


def test_an_external_issuers_token_is_accepted_within_the_clients_role(
    client: FlaskClient, keys: dict[str, Key]
) -> None:
    token = _external_token(keys)
    response = client.get("/fhir/DiagnosticReport", headers=bearer(token))
    assert response.status_code == 200 and response.get_json()["client"] == "ehr-ext"
    # The token claims AuditEvent access, but an EHR may not have it: the excess is not granted.
    assert client.get("/fhir/AuditEvent", headers=bearer(token)).status_code == 403


@pytest.mark.parametrize(
    "changes",
    [{"key": "attacker"}, {"client_id": "stranger"}, {"aud": "http://other.test"}, {"exp": int(time.time()) - 300}],
    ids=["wrong-key", "unregistered-client", "wrong-aud", "expired"],
)
def test_a_bad_external_token_gets_401(client: FlaskClient, keys: dict[str, Key], changes: dict[str, Any]) -> None:
    assert client.get("/fhir/DiagnosticReport", headers=bearer(_external_token(keys, **changes))).status_code == 401


# ---------------------------------------------------------------------------------------------- pieces


def test_scopes_parse_v1_and_v2() -> None:
    assert str(Scope.parse("system/Observation.read")) == "system/Observation.rs"
    assert str(Scope.parse("system/Observation.write")) == "system/Observation.cud"
    assert str(Scope.parse("system/*.*")) == "system/*.cruds"
    assert Scope.parse("system/*.rs").covers(Scope.parse("system/Task.r"))
    assert not Scope.parse("system/Task.rs").covers(Scope.parse("system/Task.c"))
    assert not Scope.parse("system/Task.rs").covers(Scope.parse("patient/Task.r"))
    for bad in (
        "system/Task.sr",
        "system/Task.rr",
        "system/task.r",
        "system/Task",
        "Task.r",
        "system/Task.x",
        "openid",
    ):
        with pytest.raises(ValueError):
            Scope.parse(bad)
    assert parse_scopes("system/Task.rs  system/DiagnosticReport.read")[1].permissions == "rs"
    assert scope_for("DiagnosticReport", "search-type") == "system/DiagnosticReport.s"


def test_registrations_refuse_private_keys_and_scopes_beyond_the_role(keys: dict[str, Key]) -> None:
    private = keys["ris"].private.private_numbers()
    leaked = {"keys": [{**keys["ris"].jwk, "d": str(private.private_value)}]}
    with pytest.raises(ValueError, match="private key material"):
        ClientRegistration("x", Role.RIS, leaked)
    with pytest.raises(ValueError, match="beyond role"):
        ClientRegistration("x", Role.RIS, keys["ris"].jwks(), scopes=("system/AuditEvent.rs",))
    with pytest.raises(ValueError, match="asymmetric"):
        ExternalIssuer("https://idp", keys["idp"].jwks(), algorithms=("HS256",))


def test_the_registry_reads_a_file(tmp_path: Path, keys: dict[str, Key]) -> None:
    (tmp_path / "ris.jwks.json").write_text(json.dumps(keys["ris"].jwks()))
    (tmp_path / "clients.json").write_text(
        json.dumps(
            {
                "clients": [{"client_id": "ris-1", "role": "ris", "jwks_file": "ris.jwks.json"}],
                "external_issuers": [{"issuer": "https://idp", "jwks": keys["idp"].jwks(), "role": "ehr"}],
            }
        )
    )
    registry = ClientRegistry.from_file(tmp_path / "clients.json")
    ris = registry.get("ris-1")
    assert ris is not None and ris.role is Role.RIS
    issuer = registry.issuer("https://idp")
    assert issuer is not None and issuer.role is Role.EHR


def test_sql_jti_cache_refuses_a_second_use_on_each_database(engine: Engine) -> None:
    from datetime import UTC, datetime, timedelta

    cache = SqlJtiCache(engine)
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert cache.remember("c|1", later) is True
    assert cache.remember("c|1", later) is False
    assert cache.remember("c|2", later) is True
    assert cache.remember("c|old", datetime.now(UTC) - timedelta(minutes=1)) is True
    assert cache.remember("c|old", later) is True  # expired entries are forgotten


def _write_key(path: Path, private: Any) -> Path:
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def test_production_refuses_to_start_without_secrets(tmp_path: Path, keys: dict[str, Key]) -> None:
    check_production_secrets({"mode": "development"})  # development: nothing required
    with pytest.raises(InsecureConfiguration) as refused:
        check_production_secrets({"mode": "production"})
    for name in ("auth_signing_key", "auth_issuer", "auth_clients"):
        assert name in str(refused.value)

    key_path = _write_key(tmp_path / "signing.pem", ec.generate_private_key(ec.SECP384R1()))
    (tmp_path / "clients.json").write_text(json.dumps({"clients": []}))
    good = {
        "mode": "production",
        "auth_signing_key": str(key_path),
        "auth_issuer": "https://radtriage.hospital.test/auth",
        "auth_clients": str(tmp_path / "clients.json"),
    }
    check_production_secrets(good)
    assert load_signing_key(key_path).algorithm == "ES384"

    weak = _write_key(tmp_path / "weak.pem", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InsecureConfiguration, match="auth_signing_key cannot be read") as refused:
        check_production_secrets({**good, "auth_signing_key": str(weak), "auth_required": False})
    assert "auth_required" in str(refused.value)
    assert str(weak) not in str(refused.value)  # names, never values
    with pytest.raises(InsecureConfiguration, match="dicomweb_password"):
        check_production_secrets({**good, "study_source": "dicomweb", "dicomweb_username": "svc"})
