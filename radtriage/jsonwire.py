"""JSON bodies from the network, read with caps that hold before the parser runs.

Python's `json` module recurses once per nested array or object, so a body of 50,000 ``[`` ends in
`RecursionError` (a 500, and a stack walk per request) long before any check of the content. Every door that
reads JSON (FHIR, CDS Hooks) calls `loads_capped`: it refuses a body nested deeper than `MAX_DEPTH` after a
linear scan that does not recurse, and turns every parse failure into `JsonBodyError` with a fixed text (the
parser's own message quotes the body, which may hold patient data).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

#: Deepest nesting accepted. A FHIR transaction Bundle of ImagingStudies is about 10 deep; 64 leaves room.
MAX_DEPTH: Final = 64
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET: Final = re.compile(rb"[\[\]{}]")


class JsonBodyError(ValueError):
    """The body is not JSON this service reads; the message is fixed text, safe to send back."""


def nesting_depth(raw: bytes, *, stop_above: int = MAX_DEPTH) -> int:
    """The deepest array/object nesting of `raw` (brackets inside strings do not count), stopping early."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > stop_above:
                break
        else:
            depth -= 1
    return deepest


def loads_capped(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """`raw` (UTF-8, a BOM tolerated) as JSON; NaN and Infinity, deep nesting and bad text are refused."""
    if nesting_depth(raw, stop_above=max_depth) > max_depth:
        raise JsonBodyError(f"the JSON is nested more than {max_depth} levels deep")
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise JsonBodyError("the body is not valid JSON") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity are Python extensions, not JSON
