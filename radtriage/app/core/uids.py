"""The one rule for DICOM Unique Identifiers, used by every door and adapter (DICOM PS3.5 section 9.1).

A UID is ``<org root>.<suffix>``: at least two numeric components separated by dots, at most 64 characters,
and no component with a leading zero unless the component is the single digit ``0``. So ``1.2.840.10008.1``
is a UID; ``1.02.3`` (leading zero), ``7`` (one component), ``1..2`` and ``1.2.`` are not.
"""

from __future__ import annotations

import re
from typing import Final

MAX_UID_LENGTH: Final = 64
_UID: Final = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
#: Said to clients when they send something else; the offending value is never echoed (it may identify a study).
UID_RULE: Final = "a DICOM UID is at least two dot-separated numbers without leading zeros, at most 64 characters"


def is_dicom_uid(value: str) -> bool:
    """True when `value` follows PS3.5 9.1 exactly (no surrounding whitespace allowed)."""
    return len(value) <= MAX_UID_LENGTH and _UID.fullmatch(value) is not None
