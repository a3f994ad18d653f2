"""Provenance of AI-generated resources, after HL7 AI Transparency on FHIR (http://hl7.org/fhir/uv/aitransparency).

Two levels, as that guide describes them:

1. *Labelling*: every resource the model's output produced (DiagnosticReport, Observation, the Task carrying the
   priority) carries the security label ``AIAST`` ("Artificial Intelligence asserted", code system
   ``http://terminology.hl7.org/CodeSystem/v3-ObservationValue``) in ``meta.security``: `ai_security_label`,
   `label_ai_asserted`.
2. *Provenance*: a ``Provenance`` whose targets are those resources, whose author agent is a ``Device`` standing
   for the model (name, version, the weights' sha256 as an identifier) and whose entities are the inputs (the
   ImagingStudy, the order): `device_resource`, `provenance_resource`.

Built with ``fhir.resources.R4B``, so an invalid resource cannot be returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.provenance import Provenance

from ..app.core.domain import ModelIdentity
from . import codes
from .audit import reference


def ai_security_label() -> Coding:
    """The ``AIAST`` security label (HL7 v3 ObservationValue; AI Transparency on FHIR, ValueSet ProvenanceVS)."""
    return Coding.model_validate(codes.AIAST.as_fhir())


def label_ai_asserted(resource: Any) -> Any:
    """Add the AIAST label to a resource's ``meta.security`` (a fhir.resources model or a JSON dict), once.

    Returns the resource, changed in place.
    """
    label = codes.AIAST.as_fhir()
    if isinstance(resource, dict):
        security = resource.setdefault("meta", {}).setdefault("security", [])
        if not any(s.get("system") == label["system"] and s.get("code") == label["code"] for s in security):
            security.append(label)
        return resource
    from fhir.resources.R4B.meta import Meta

    if resource.meta is None:
        resource.meta = Meta()
    security = list(resource.meta.security or [])
    if not any(s.system == label["system"] and s.code == label["code"] for s in security):
        security.append(ai_security_label())
    resource.meta.security = security
    return resource


def device_id(model: ModelIdentity) -> str:
    """A stable Device id for a model: the same weights always give the same id."""
    return f"model-{model.sha256[:32]}"


def device_resource(model: ModelIdentity) -> Device:
    """The model as a FHIR Device: its name, its version and the sha256 of its artefact as identifier.

    The untrained placeholder is tagged so (``triage#untrained-placeholder``, the FHIR door's code) and says
    so in a note, so that nobody mistakes its output for a trained model's.
    """
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id(model),
        "identifier": [{"system": codes.MODEL_SHA256_SYSTEM, "value": model.sha256}],
        "status": "active",
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "type": {"text": "AI model: chest radiograph triage"},
        "version": [{"value": model.version}],
    }
    if model.placeholder:
        resource["meta"] = {
            "tag": [
                {"system": codes.TRIAGE_SYSTEM, "code": "untrained-placeholder", "display": "Untrained placeholder"}
            ]
        }
        resource["note"] = [{"text": "Untrained placeholder model: its scores carry no clinical meaning."}]
    return Device.model_validate(resource)


def provenance_resource(
    targets: Sequence[str],
    device_ref: str,
    *,
    study_ref: str | None = None,
    order_ref: str | None = None,
    recorded: datetime | None = None,
    resource_id: str | None = None,
) -> Provenance:
    """A Provenance saying that `device_ref` (the model) authored `targets` from the study and the order.

    References are ``Type/id`` or, for inputs known only by identifier, ``system|value`` (for a study,
    ``urn:dicom:uid|urn:oid:<Study Instance UID>``).
    """
    if not targets:
        raise ValueError("a Provenance needs at least one target")
    when = (recorded or datetime.now(UTC)).astimezone(UTC)
    entities = []
    if study_ref:
        entities.append({"role": "source", "what": reference(study_ref, resource_type="ImagingStudy")})
    if order_ref:
        entities.append({"role": "source", "what": reference(order_ref, resource_type="ServiceRequest")})
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [reference(t) for t in targets],
        "recorded": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "activity": {"coding": [codes.DATA_OPERATION_CREATE.as_fhir()]},
        # AI Transparency's AI-Provenance: the reason says that AI asserted the targets.
        "reason": [{"coding": [codes.AIAST.as_fhir()]}],
        "agent": [
            {
                "type": {"coding": [codes.PROVENANCE_AUTHOR.as_fhir()]},
                "who": reference(device_ref, resource_type="Device"),
            }
        ],
    }
    if resource_id:
        resource["id"] = resource_id
    if entities:
        resource["entity"] = entities
    return Provenance.model_validate(resource)
