"""The CapabilityStatement (FHIR R4 capabilitystatement.html), derived from the routes that exist.

`capability_statement` is given the door's routes as Flask registered them and the search parameters its
handlers accept, and turns each route shape into the interaction the FHIR RESTful API (R4 http.html) names:

=====================================  ======  =============================================
route                                  method  interaction
=====================================  ======  =============================================
``/``                                  POST    transaction (system)
``/<Type>``                            POST    create
``/<Type>``                            GET     search-type
``/<Type>/<id>``                       GET     read
``/$<name>``                           GET     system operation (``rest.operation``)
``/metadata``                          GET     (this statement)
``/.well-known/smart-configuration``   GET     (SMART discovery; named in ``rest.security``)
=====================================  ======  =============================================

A route of any other shape is an error here, so nobody can add an endpoint the statement does not describe.

`Security` fills ``rest.security`` (R4 CapabilityStatement.rest.security): the service code ``SMART-on-FHIR``
(restful-security-service) and, after SMART App Launch 2.x "Conformance", the token endpoint in the
``oauth-uris`` extension. SMART clients discover the rest from ``.well-known/smart-configuration``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Final

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

JsonObject = dict[str, Any]

FHIR_VERSION: Final = "4.0.1"
_TYPE_ROUTE = re.compile(r"/([A-Z][A-Za-z]+)")
_INSTANCE_ROUTE = re.compile(r"/([A-Z][A-Za-z]+)/<[^>]+>")
_OPERATION_ROUTE = re.compile(r"/\$([a-z][a-z0-9-]*)")
_IGNORED_METHODS: Final = frozenset({"HEAD", "OPTIONS"})
#: Routes that are not FHIR interactions: this statement, and SMART's discovery document.
_NOT_INTERACTIONS: Final = frozenset({"/metadata", "/.well-known/smart-configuration"})
SMART_ON_FHIR: Final = {
    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
    "code": "SMART-on-FHIR",
    "display": "SMART-on-FHIR",
}
#: SMART App Launch: OAuth endpoints announced in the CapabilityStatement (kept for clients that read them there).
OAUTH_URIS_EXTENSION: Final = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@dataclass(frozen=True)
class SearchParam:
    """One search parameter a search handler accepts (R4 CapabilityStatement.rest.resource.searchParam)."""

    name: str
    type: str  # R4 search-param-type: token, reference, date, string, ...
    definition: str  # canonical URL of the SearchParameter it implements
    documentation: str


@dataclass(frozen=True)
class Operation:
    """A system-level operation (R4 CapabilityStatement.rest.operation): its name and its OperationDefinition."""

    name: str
    definition: str  # canonical URL of the OperationDefinition


@dataclass(frozen=True)
class Security:
    """How clients get access: None for `token_url` means access control is off (development only)."""

    token_url: str | None
    smart_configuration_url: str

    def as_fhir(self) -> JsonObject:
        if self.token_url is None:
            return {
                "description": "Access control is OFF on this server (development mode): no token is required. "
                "Production servers require SMART Backend Services bearer tokens."
            }
        return {
            "extension": [{"url": OAUTH_URIS_EXTENSION, "extension": [{"url": "token", "valueUri": self.token_url}]}],
            "service": [{"coding": [SMART_ON_FHIR], "text": "OAuth 2.0 bearer tokens (SMART Backend Services)"}],
            "description": (
                "Every request except /metadata and .well-known/smart-configuration needs a bearer access token. "
                "Registered clients get one from the token endpoint by the SMART Backend Services flow "
                "(client_credentials with a private_key_jwt assertion, RS384 or ES384); see "
                f"{self.smart_configuration_url}. Scopes are SMART v2 system scopes, e.g. system/ImagingStudy.c, "
                "system/DiagnosticReport.rs, system/AuditEvent.rs."
            ),
        }


@dataclass(frozen=True)
class Route:
    """A route of the door: its path relative to the FHIR base, its HTTP methods, the handler's docstring."""

    path: str
    methods: frozenset[str]
    documentation: str = ""


def capability_statement(
    routes: Iterable[Route],
    *,
    search_params: Mapping[str, Sequence[SearchParam]],
    base_url: str,
    operations: Mapping[str, Operation] | None = None,
    security: Security | None = None,
    related: Sequence[str] = (),
) -> JsonObject:
    """The server's CapabilityStatement (kind ``instance``) for `routes` served at `base_url`.

    `operations` describes each ``/$<name>`` route by name (a route without a description is an error);
    `related` are sentences about the service's other standard interfaces (CDS Hooks, DICOM results), appended
    to ``rest.documentation``.
    """
    resources: dict[str, list[JsonObject]] = {}
    system_interactions: list[JsonObject] = []
    system_operations: list[JsonObject] = []
    for route in sorted(routes, key=lambda r: r.path):
        for method in sorted(route.methods - _IGNORED_METHODS):
            if (operation_name := _operation(route.path, method)) is not None:
                operation = (operations or {}).get(operation_name)
                if operation is None:
                    raise ValueError(f"the CapabilityStatement has no definition for the operation ${operation_name}")
                described_operation = {"name": operation.name, "definition": operation.definition}
                if route.documentation:
                    described_operation["documentation"] = route.documentation
                if described_operation not in system_operations:
                    system_operations.append(described_operation)
                continue
            interaction = _interaction(route.path, method)
            if interaction is None:
                continue
            resource_type, code = interaction
            entry = {"code": code}
            if route.documentation:
                entry["documentation"] = route.documentation
            if resource_type is None:
                system_interactions.append(entry)
            else:
                resources.setdefault(resource_type, []).append(entry)

    rest_resources = []
    for resource_type in sorted(resources):
        interactions = resources[resource_type]
        described: JsonObject = {"type": resource_type, "interaction": interactions}
        if any(i["code"] == "search-type" for i in interactions):
            described["searchParam"] = [
                {"name": p.name, "definition": p.definition, "type": p.type, "documentation": p.documentation}
                for p in search_params.get(resource_type, ())
            ]
        if any(i["code"] == "read" for i in interactions):
            described["versioning"] = "no-version"
            described["readHistory"] = False
        rest_resources.append(described)

    rest: JsonObject = {
        "mode": "server",
        "documentation": (
            "Chest X-ray triage. POST an ImagingStudy, a ServiceRequest or a transaction Bundle holding them; "
            "the answer is a Task to poll (in a transaction, each entry names its own kept resource and the Task "
            "is found with Task?based-on=ServiceRequest/<id>). Results are a preliminary DiagnosticReport with "
            "one Observation per finding, labelled AIAST (AI asserted), with a Provenance naming the model's "
            "Device. Every read and search of results and of the audit trail (AuditEvent, $audit-export) is "
            "audited. Searches are strict: an unknown parameter is an error unless the request says "
            "'Prefer: handling=lenient'. "
            "_count (at most 100) and _offset page the results." + "".join(f" {sentence}" for sentence in related)
        ),
        "resource": rest_resources,
    }
    if security is not None:
        rest["security"] = security.as_fhir()
    if system_interactions:
        rest["interaction"] = system_interactions
    if system_operations:
        rest["operation"] = system_operations
    statement: JsonObject = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "publisher": "radtriage",
        "kind": "instance",
        "software": {"name": "radtriage", "version": _software_version()},
        "implementation": {"description": "radtriage FHIR door", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [rest],
    }
    dumped: JsonObject = CapabilityStatement.model_validate(statement).model_dump(mode="json", exclude_none=True)
    return dumped


def _operation(path: str, method: str) -> str | None:
    """The operation's name for a ``/$<name>`` route (GET or POST), else None."""
    match = _OPERATION_ROUTE.fullmatch(path.rstrip("/"))
    return match.group(1) if match and method in ("GET", "POST") else None


def _interaction(path: str, method: str) -> tuple[str | None, str] | None:
    """(resource type or None for the system level, interaction code); None for routes that are not one."""
    path = path.rstrip("/") or "/"
    if path in _NOT_INTERACTIONS and method == "GET":
        return None
    if path == "/" and method == "POST":
        return None, "transaction"
    if (match := _TYPE_ROUTE.fullmatch(path)) and method in ("POST", "GET"):
        return match.group(1), "create" if method == "POST" else "search-type"
    if (match := _INSTANCE_ROUTE.fullmatch(path)) and method == "GET":
        return match.group(1), "read"
    raise ValueError(f"the CapabilityStatement cannot describe {method} {path}; teach capability.py its shape")


def _software_version() -> str:
    try:
        return metadata.version("radtriage")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"
