"""One UID rule (DICOM PS3.5 9.1) for every door: the FHIR and HL7 doors accept and refuse the same Study UIDs.

Before, `1.02.3` (leading zero) passed the HL7 door and failed later as study-not-found, while `7` (a single
component) passed the FHIR door and was refused by HL7.
"""

from __future__ import annotations

import pytest

from radtriage.app.core.errors import TriageError
from radtriage.app.core.uids import is_dicom_uid
from radtriage.fhir import inbound
from radtriage.hl7 import er7
from radtriage.hl7.mapping import ReaderOptions, decode_message, read_header, read_orders
from tests.hl7.messages import omi

VALID = ["1.2.840.10008.1.2", "0.0", "2.25.329800735698586629295641978511506172918", "1." + "2" * 62]
INVALID = ["1.02.3", "7", "1..2", "1.2.", ".1.2", "1.2.abc", "1.2.3 ", "1." * 32 + "1", "", "1.2.-3"]


@pytest.mark.parametrize("uid", VALID)
def test_valid_uids(uid: str) -> None:
    assert is_dicom_uid(uid)


@pytest.mark.parametrize("uid", INVALID)
def test_invalid_uids(uid: str) -> None:
    assert not is_dicom_uid(uid)


def _fhir_accepts(uid: str) -> bool:
    study = {
        "resourceType": "ImagingStudy",
        "id": "is-1",
        "status": "available",
        "subject": {"reference": "Patient/p1"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
    }
    try:
        inbound.order_from_imaging_study(study)
    except TriageError:
        return False
    return True


def _hl7_accepts(uid: str) -> bool:
    text, _ = decode_message(omi(study_uid=uid))
    message = er7.parse(text)
    _, issues = read_orders(message, read_header(message), ReaderOptions())
    return not issues


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "1.02.3", "7", "1..2", "1.2.abc"])
def test_both_doors_apply_the_same_rule(uid: str) -> None:
    assert _fhir_accepts(uid) == _hl7_accepts(uid) == is_dicom_uid(uid)
