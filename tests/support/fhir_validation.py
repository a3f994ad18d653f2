"""Two independent opinions on every FHIR resource the service emits.

1. The official FHIR R4 (4.0.1) JSON Schema from ``../shared/fhir`` (element names, types, code enumerations,
   patterns), applied with a Draft 6 validator to ``#/definitions/<resourceType>``.
2. `fhir.resources.R4B` (cardinality, primitive formats, choice types).

Use the `fhir_schema_path` fixture (tests/support/data.py) for the schema's path; it skips with a reason when
../shared is absent. Nothing here is a fixture: import `assert_valid_fhir` and call it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from jsonschema import Draft6Validator
from referencing import Registry
from referencing.jsonschema import DRAFT6

SCHEMA_URI = "http://hl7.org/fhir/json-schema/4.0"


@functools.cache
def _registry(schema_path: Path) -> Registry[Any]:
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    registry: Registry[Any] = Registry().with_resource(SCHEMA_URI, DRAFT6.create_resource(schema))
    return registry


@functools.cache
def _validator(schema_path: Path, resource_type: str) -> Draft6Validator:
    return Draft6Validator({"$ref": f"{SCHEMA_URI}#/definitions/{resource_type}"}, registry=_registry(schema_path))


def schema_errors(resource: dict[str, Any], schema_path: Path) -> list[str]:
    """Every JSON Schema violation of `resource`, as ``path: message`` lines (empty when it is valid)."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return ["<root>: no resourceType"]
    validator = _validator(schema_path, resource_type)
    problems = [
        f"{resource_type}.{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message[:300]}"
        for error in validator.iter_errors(resource)
    ]
    # The schema checks Bundle entries through a oneOf of every resource type, whose messages say only
    # "not valid under any of the given schemas"; checking each entry on its own names the real problem.
    for index, entry in enumerate(resource.get("entry", []) if resource_type == "Bundle" else []):
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            problems += [f"entry[{index}].{p}" for p in schema_errors(entry["resource"], schema_path)]
    return problems


def assert_valid_fhir(resource: dict[str, Any], schema_path: Path | None) -> None:
    """Fail the test unless `resource` is valid R4 by the JSON Schema and parses with fhir.resources.R4B.

    Without the schema (a fresh clone has no ../shared) only the fhir.resources check runs."""
    if schema_path is not None:
        problems = schema_errors(resource, schema_path)
        assert not problems, "FHIR R4 JSON Schema violations:\n" + "\n".join(problems)
    model = get_fhir_model_class(resource["resourceType"])
    model.model_validate(resource)  # raises pydantic.ValidationError with the element path
