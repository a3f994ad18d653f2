"""``radtriage clients add|list|remove``: a key imported from PEM or JWKS, and the printed instructions work."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import jwt
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from radtriage.cli import main
from radtriage.compliance.auth import AccessControl, ClientRegistry, generate_signing_key, public_jwk


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "RADTRIAGE_HOME": str(tmp_path / "home"),
        "RADTRIAGE_AUTH_CLIENTS": str(tmp_path / "clients.json"),
        "RADTRIAGE_BASE_URL": "https://triage.example",
    }


def test_a_client_added_from_a_pem_key_gets_a_token_exactly_as_the_printed_instructions_say(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP384R1())
    pem = tmp_path / "ris.pub.pem"
    pem.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, out = run(_env(tmp_path), "clients", "add", "ris-main", "--role", "ris", "--pem", str(pem))
    assert code == 0, out
    token_url = re.search(r"token URL:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    aud = re.search(r"aud = (\S+);", out).group(1)  # type: ignore[union-attr]
    kid = re.search(r"kid one of: (\S+)", out).group(1)  # type: ignore[union-attr]
    assert token_url == aud == "https://triage.example/auth/token"
    assert "system/Task.rs" in out and "system/AuditEvent" not in out

    access = AccessControl(
        issuer="https://triage.example/auth",
        token_url=token_url,
        audience="https://triage.example/fhir",
        signing_key=generate_signing_key(),
        registry=ClientRegistry.from_file(tmp_path / "clients.json"),
    )
    now = int(time.time())
    assertion = jwt.encode(
        {"iss": "ris-main", "sub": "ris-main", "aud": aud, "exp": now + 240, "jti": uuid.uuid4().hex},
        private,
        algorithm="ES384",
        headers={"kid": kid},
    )
    answer = access.issue_token(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
            "scope": "system/Task.rs",
        }
    )
    assert answer["access_token"] and answer["scope"] == "system/Task.rs"


def test_jwks_import_list_remove_and_refusals(tmp_path: Path) -> None:
    env = _env(tmp_path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = tmp_path / "ehr.jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(key.public_key())]}))
    code, out = run(env, "clients", "add", "ehr-1", "--role", "ehr", "--jwks", str(jwks), "--scope", "system/Task.rs")
    assert code == 0, out
    code, out = run(env, "clients", "list")
    assert code == 0 and "ehr-1" in out and "role=ehr" in out and "system/Task.rs" in out

    private_jwk = {**public_jwk(key.public_key()), "d": "secret"}
    (tmp_path / "private.json").write_text(json.dumps({"keys": [private_jwk]}))
    code, out = run(env, "clients", "add", "bad", "--role", "ehr", "--jwks", str(tmp_path / "private.json"))
    assert code != 0 and "private key material" in out
    code, out = run(env, "clients", "add", "x", "--role", "ehr", "--scope", "system/AuditEvent.rs", "--jwks", str(jwks))
    assert code != 0 and "beyond role" in out
    code, out = run(env, "clients", "add", "x", "--role", "ehr")
    assert code != 0 and "--jwks FILE or --pem FILE" in out
    private_pem = tmp_path / "private.pem"
    private_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    code, out = run(env, "clients", "add", "x", "--role", "ehr", "--pem", str(private_pem))
    assert code != 0 and "not a PEM public key" in out

    assert run(env, "clients", "remove", "ehr-1")[0] == 0
    code, out = run(env, "clients", "remove", "ehr-1")
    assert code != 0 and "no client 'ehr-1'" in out
    assert json.loads((tmp_path / "clients.json").read_text())["clients"] == []
