"""The patient as the EHR knows them: the Patient from the call's prefetch, else read from its ``fhirServer``.

CDS Hooks 2.0 (Prefetch): a service states what it wants (discovery's ``prefetch`` templates); the EHR may send
it, and when it does not, the service may read it itself from ``fhirServer`` with the ``fhirAuthorization``
bearer token. Here the Patient is wanted for its identifiers: orders that came over HL7 name the patient by
identifier (``system|value``), not by the EHR's FHIR id.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, Final, Protocol

import requests

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
FETCH_TIMEOUT_S: Final = 5.0
_MAX_PATIENT_BYTES: Final = 1024 * 1024


class PatientFetcher(Protocol):
    def __call__(self, fhir_server: str, patient_id: str, access_token: str | None) -> JsonObject | None:
        """The Patient, or None when it cannot be read."""
        ...


def fetch_patient(fhir_server: str, patient_id: str, access_token: str | None) -> JsonObject | None:
    """``GET <fhirServer>/Patient/<id>`` as FHIR JSON, with the bearer token when there is one; None on failure."""
    headers = {"Accept": "application/fhir+json"}
    if access_token:
        headers["Authorization"] = f"Bearer {access_token}"
    try:
        response = requests.get(
            f"{fhir_server.rstrip('/')}/Patient/{patient_id}",
            headers=headers,
            timeout=FETCH_TIMEOUT_S,
            allow_redirects=False,
            stream=True,
        )
        body = response.raw.read(_MAX_PATIENT_BYTES + 1, decode_content=True)
        response.close()
    except requests.RequestException as error:
        log.warning("CDS: the EHR's FHIR server could not be read (%s)", type(error).__name__)
        return None
    if response.status_code != 200 or len(body) > _MAX_PATIENT_BYTES:
        log.warning("CDS: the EHR's FHIR server answered %s for the Patient", response.status_code)
        return None
    try:
        import json

        patient = json.loads(body)
    except ValueError:
        return None
    return patient if isinstance(patient, dict) else None


def patient_refs(
    patient_id: str,
    body: JsonObject,
    fetch: PatientFetcher | None,
    *,
    allowed: Callable[[str], bool],
) -> list[str]:
    """Every way an order here may name the patient: ``Patient/<id>``, the server's absolute URL for it, and
    ``system|value`` for each of the Patient's identifiers (from prefetch, else from the FHIR server)."""
    refs = [f"Patient/{patient_id}"]
    server = body.get("fhirServer")
    if isinstance(server, str):
        refs.append(f"{server.rstrip('/')}/Patient/{patient_id}")
    patient = _prefetched(body, patient_id)
    if patient is None and isinstance(server, str) and fetch is not None:
        if allowed(server):
            authorization = body.get("fhirAuthorization") or {}
            patient = fetch(server, patient_id, authorization.get("access_token"))
            if patient is not None and patient.get("id") != patient_id:
                patient = None
        else:
            log.warning("CDS: fhirServer is not registered for this EHR; the Patient is not read")
    for identifier in (patient or {}).get("identifier") or []:
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            system = identifier.get("system") if isinstance(identifier.get("system"), str) else ""
            refs.append(f"{system}|{identifier['value']}")
    return [r for r in dict.fromkeys(refs) if len(r) <= 255 and re.fullmatch(r"\S.*", r)]


def _prefetched(body: JsonObject, patient_id: str) -> JsonObject | None:
    prefetch = body.get("prefetch")
    patient = prefetch.get("patient") if isinstance(prefetch, dict) else None
    if isinstance(patient, dict) and patient.get("resourceType") == "Patient" and patient.get("id") == patient_id:
        return patient
    return None
