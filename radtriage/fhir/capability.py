"""The CapabilityStatement (FHIR R4 capabilitystatement.html), derived from the routes that exist.

`capability_statement` is given the door's routes as Flask registered them and the search parameters its
handlers accept, and turns each route shape into the interaction the FHIR RESTful API (R4 http.html) names:

================  ======  ====================
route             method  interaction
================  ======  ====================
``/``             POST    transaction (system)
``/<Type>``       POST    create
``/<Type>``       GET     search-type
``/<Type>/<id>``  GET     read
``/metadata``     GET     (this statement)
================  ======  ====================

A route of any other shape is an error here, so nobody can add an endpoint the statement does not describe.
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
_IGNORED_METHODS: Final = frozenset({"HEAD", "OPTIONS"})


@dataclass(frozen=True)
class SearchParam:
    """One search parameter a search handler accepts (R4 CapabilityStatement.rest.resource.searchParam)."""

    name: str
    type: str  # R4 search-param-type: token, reference, date, string, ...
    definition: str  # canonical URL of the SearchParameter it implements
    documentation: str


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
) -> JsonObject:
    """The server's CapabilityStatement (kind ``instance``) for `routes` served at `base_url`."""
    resources: dict[str, list[JsonObject]] = {}
    system_interactions: list[JsonObject] = []
    for route in sorted(routes, key=lambda r: r.path):
        for method in sorted(route.methods - _IGNORED_METHODS):
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
            "the answer is a Task to poll. Results are a preliminary DiagnosticReport with one Observation per "
            "finding. Searches are strict: an unknown parameter is an error unless the request says "
            "'Prefer: handling=lenient'. _count (at most 100) and _offset page the results."
        ),
        "resource": rest_resources,
    }
    if system_interactions:
        rest["interaction"] = system_interactions
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


def _interaction(path: str, method: str) -> tuple[str | None, str] | None:
    """(resource type or None for the system level, interaction code), None for /metadata."""
    path = path.rstrip("/") or "/"
    if path == "/metadata" and method == "GET":
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
