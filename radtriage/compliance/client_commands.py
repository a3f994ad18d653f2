"""``radtriage clients add|list|remove``: the SMART Backend Services clients allowed to ask for FHIR API tokens.

The registry is the JSON file named by the ``auth_clients`` setting (or ``--file``); its format::

    {"clients": [
       {"client_id": "ris-main", "role": "ris", "name": "Main RIS",
        "scopes": ["system/Task.rs"],                      (optional: narrower than the role's scopes)
        "jwks": {"keys": [{"kty": "EC", "crv": "P-384", "x": "...", "y": "...", "kid": "...", "alg": "ES384"}]}},
       {"client_id": "ehr", "role": "ehr", "jwks_file": "ehr.jwks.json"}  (a JWKS file beside the registry)
     ],
     "external_issuers": [{"issuer": "https://idp.example", "jwks_file": "idp.jwks.json",
                           "audience": "https://radtriage.example/fhir", "role": "ehr"}]}

Roles (``ehr``, ``ris``, ``compliance``, ``admin``) bound what a client may be granted (`ROLE_SCOPES`). Keys are
public keys only (RS384 with RSA 2048+, or ES384 with EC P-384); ``add`` takes a JWKS file or a PEM public key
and prints what the client must put in its signed assertion. A running server reads the registry at start-up.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .auth import ASSERTION_ALGORITHMS, CLIENT_ASSERTION_TYPE, ROLE_SCOPES, ClientRegistration, ClientRegistry, Role
from .auth import public_jwk as jwk_of


def _settings(obj: Any) -> Any:
    from ..app.config import load_settings

    return load_settings(obj.get("config") if isinstance(obj, dict) else None)


def _registry_file(obj: Any, file: Path | None) -> Path:
    if file is not None:
        return file
    configured = _settings(obj).auth_clients
    if not configured:
        raise click.UsageError("give --file, or set auth_clients (RADTRIAGE_AUTH_CLIENTS) to the client registry")
    return Path(configured)


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"clients": [], "external_issuers": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ClientRegistry.from_dict(data, base=path.parent)
    except (OSError, ValueError, KeyError, TypeError) as error:
        problem = f"{type(error).__name__}: {error}"
        raise click.ClickException(f"the client registry {path} cannot be read ({problem})") from None
    if not isinstance(data, dict):
        raise click.ClickException(f"the client registry {path} is not a JSON object")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    temporary.chmod(0o600)
    os.replace(temporary, path)


def _jwks_from(jwks_file: Path | None, pem_file: Path | None) -> dict[str, Any]:
    if (jwks_file is None) == (pem_file is None):
        raise click.UsageError("give exactly one of --jwks FILE or --pem FILE (the client's public key)")
    if jwks_file is not None:
        try:
            jwks = json.loads(jwks_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise click.ClickException(f"{jwks_file} is not a JSON Web Key Set ({type(error).__name__})") from None
        if isinstance(jwks, dict) and "kty" in jwks:
            jwks = {"keys": [jwks]}  # a single JWK is accepted as a set of one
        return dict(jwks) if isinstance(jwks, dict) else {}
    assert pem_file is not None
    try:
        key = serialization.load_pem_public_key(pem_file.read_bytes())
    except (OSError, ValueError) as error:
        raise click.ClickException(
            f"{pem_file} is not a PEM public key ({type(error).__name__}); give the public key, never the private"
        ) from None
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1":
        return {"keys": [jwk_of(key)]}
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return {"keys": [jwk_of(key)]}
    raise click.ClickException("the key must be EC P-384 (ES384) or RSA with at least 2048 bits (RS384)")


def _base_url(settings: Any) -> str:
    return str(settings.base_url).rstrip("/") or f"http://{settings.host}:{settings.port}"


def _print_instructions(client: ClientRegistration, base: str) -> None:
    token_url = f"{base}/auth/token"
    scopes = " ".join(str(s) for s in client.allowed_scopes)
    algorithms = sorted({k.get("alg") for k in client.jwks["keys"] if k.get("alg")} or set(ASSERTION_ALGORITHMS))
    click.echo(f"client {client.client_id} ({client.role.value}) registered. What it needs:")
    click.echo(f"  token URL:        {token_url}")
    click.echo(f"  FHIR base URL:    {base}/fhir")
    click.echo(f"  assertion (JWT):  iss = sub = {client.client_id}; aud = {token_url}; exp <= 5 min; unique jti;")
    click.echo(f"                    signed {' or '.join(algorithms)} with kid one of: "
               + ", ".join(k["kid"] for k in client.jwks["keys"]))  # fmt: skip
    click.echo("  token request:    grant_type=client_credentials, "
               f"client_assertion_type={CLIENT_ASSERTION_TYPE}")  # fmt: skip
    click.echo(f"  allowed scopes:   {scopes}")
    click.echo("  (a running server reads the registry at start-up: restart it)")


file_option = click.option(
    "--file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The client registry (default: the auth_clients setting).",
)


@click.group("clients")
def clients_group() -> None:
    """SMART Backend Services clients of the FHIR API: add (JWKS or PEM public key), list, remove."""


@clients_group.command("add")
@click.argument("client_id")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]), help="What kind of client.")
@click.option("--jwks", "jwks_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JWKS file.")
@click.option("--pem", "pem_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="PEM public key.")
@click.option("--scope", "scopes", multiple=True, help="Narrow the role's scopes (repeat); default: all of the role's.")
@click.option("--name", default=None, help="A readable name for the client.")
@file_option
@click.pass_obj
def add_command(
    obj: Any,
    client_id: str,
    role: str,
    jwks_file: Path | None,
    pem_file: Path | None,
    scopes: tuple[str, ...],
    name: str | None,
    file: Path | None,
) -> None:
    """Register a client (or replace one of that id) and print what its assertions must carry."""
    path = _registry_file(obj, file)
    data = _read(path)
    entry: dict[str, Any] = {"client_id": client_id, "role": role, "jwks": _jwks_from(jwks_file, pem_file)}
    if scopes:
        entry["scopes"] = list(scopes)
    if name:
        entry["name"] = name
    try:
        client = ClientRegistration.from_dict(entry)
    except (ValueError, KeyError) as refused:
        raise click.ClickException(str(refused)) from None
    data["clients"] = [c for c in data.get("clients", []) if c.get("client_id") != client_id] + [entry]
    _write(path, data)
    _print_instructions(client, _base_url(_settings(obj)))


@clients_group.command("list")
@file_option
@click.pass_obj
def list_command(obj: Any, file: Path | None) -> None:
    """Every registered client: id, role, allowed scopes, key ids."""
    path = _registry_file(obj, file)
    data = _read(path)
    clients = [ClientRegistration.from_dict(c, base=path.parent) for c in data.get("clients", [])]
    if not clients:
        click.echo(f"no clients in {path}")
    for client in sorted(clients, key=lambda c: c.client_id):
        kids = ", ".join(k["kid"] for k in client.jwks["keys"])
        label = f" ({client.name})" if client.name else ""
        click.echo(f"{client.client_id}{label}  role={client.role.value}  keys={kids}")
        click.echo(f"    scopes: {' '.join(str(s) for s in client.allowed_scopes)}")
    for issuer in data.get("external_issuers", []):
        click.echo(f"external issuer {issuer.get('issuer')}  role={issuer.get('role') or '-'}")


@clients_group.command("remove")
@click.argument("client_id")
@file_option
@click.pass_obj
def remove_command(obj: Any, client_id: str, file: Path | None) -> None:
    """Remove a client (a running server applies it at its next start)."""
    path = _registry_file(obj, file)
    data = _read(path)
    remaining = [c for c in data.get("clients", []) if c.get("client_id") != client_id]
    if len(remaining) == len(data.get("clients", [])):
        raise click.ClickException(f"there is no client {client_id!r} in {path}")
    data["clients"] = remaining
    _write(path, data)
    click.echo(f"client {client_id} removed from {path} (restart the server to apply)")


__all__ = ["clients_group", "ROLE_SCOPES"]
