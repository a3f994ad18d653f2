"""Strict reading of FHIR JSON primitives, which `fhir.resources` coerces.

FHIR R4 JSON (json.html 2.6.2): integer, positiveInt, unsignedInt and decimal are JSON numbers and boolean is a
JSON ``true``/``false``; a JSON string is never one of them. pydantic's lax mode (which `fhir.resources` models
use, and whose ``strict=True`` their custom primitive types ignore) reads ``"numberOfSeries": "1"`` as 1 and
``"doNotPerform": "true"`` as True. A sender that writes numbers as strings has a bug the server should
report, not hide, so `primitive_type_problems` walks the JSON beside the model's fields and names each misfit.
"""

from __future__ import annotations

import decimal
import functools
import types
import typing
from collections.abc import Iterator
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import BaseModel

#: What the JSON value of each strict primitive must be (bool is an int in Python, so it is excluded apart).
_INTEGER: Final = "integer"
_DECIMAL: Final = "decimal"
_BOOLEAN: Final = "boolean"
_EXPECTED: Final = {_INTEGER: "a JSON integer", _DECIMAL: "a JSON number", _BOOLEAN: "JSON true or false"}


def primitive_type_problems(payload: dict[str, Any], model: type[BaseModel], path: str) -> Iterator[tuple[str, str]]:
    """(FHIRPath, message) for every integer, decimal or boolean element whose JSON value has another type."""
    fields = _field_kinds(model)
    for name, value in payload.items():
        kind = fields.get(name)
        if kind is None:
            continue  # unknown names and ``_element`` extensions are the model's to judge
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            where = f"{path}.{name}" + (f"[{index}]" if isinstance(value, list) else "")
            if isinstance(kind, str):
                if not _fits(item, kind):
                    yield where, f"must be {_EXPECTED[kind]}, not a JSON {_json_type(item)}"
            elif isinstance(item, dict):
                yield from primitive_type_problems(item, _concrete(kind, item), where)


def _fits(value: Any, kind: str) -> bool:
    if value is None:
        return True  # null is refused by the model itself
    if kind == _BOOLEAN:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == _INTEGER:
        return isinstance(value, int)  # 1.0 is a decimal in FHIR JSON, not an integer
    return isinstance(value, int | float)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else "value"


def _concrete(model: type[BaseModel], item: dict[str, Any]) -> type[BaseModel]:
    """A contained or Bundle entry resource is typed by its own ``resourceType``."""
    if model is Resource or model.__name__ == "Resource":
        name = item.get("resourceType")
        try:
            found: type[BaseModel] = get_fhir_model_class(name) if isinstance(name, str) else model
        except (KeyError, ValueError, AttributeError):
            return model
        return found
    return model


@functools.cache
def _field_kinds(model: type[BaseModel]) -> dict[str, str | type[BaseModel]]:
    """JSON name → the strict primitive kind, or the element model to descend into."""
    kinds: dict[str, str | type[BaseModel]] = {}
    for name, field in model.model_fields.items():
        kind = _kind(field.annotation)
        if kind is not None:
            kinds[field.alias or name] = kind
    return kinds


def _kind(annotation: Any) -> str | type[BaseModel] | None:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.List):  # noqa: UP006 - get_origin may return it
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                found = _kind(arg)
                if found is not None:
                    return found
        return None
    if origin is typing.Annotated:
        return _kind(typing.get_args(annotation)[0])
    if annotation is bool:
        return _BOOLEAN
    if annotation is int:
        return _INTEGER
    if annotation in (float, decimal.Decimal):
        return _DECIMAL
    if isinstance(annotation, type):
        return _model_class(annotation)
    return None


def _model_class(annotation: type) -> type[BaseModel] | None:
    """The R4B model behind a lazy ``abc.<Name>Type`` placeholder (or the class itself)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    name = annotation.__name__
    if not name.endswith("Type"):
        return None
    try:
        found: type[BaseModel] = get_fhir_model_class(name.removesuffix("Type"))
    except (KeyError, ValueError, AttributeError):
        return None
    return found
