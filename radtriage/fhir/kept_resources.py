"""The ServiceRequests and ImagingStudies orders came as, kept so that references to them resolve.

FHIR R4 http 3.1.0.4 (create) and 3.1.0.11.2 (transaction): the server assigns ids to what it creates, answers
each transaction entry with that entry's own location, and rewrites references to an entry's ``fullUrl``
(``urn:uuid:...``) into references to the resource as stored. The orders themselves are the core's; these
helpers give the door's `FhirResourceStore` the resources, and `api` the entry responses.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from ..app.core.domain import ImagingOrder, Job
from . import inbound, mapping
from .resource_store import FhirResourceStore

JsonObject = dict[str, Any]
_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True)
class Accepted:
    """An order the door submitted: its Task (as JSON), job, whether it is new, and the order as stored."""

    task: JsonObject
    job: Job
    created: bool
    order: ImagingOrder


def with_resource_ids(
    order: ImagingOrder, resources: FhirResourceStore | None, *, request: bool = False, study: bool = False
) -> ImagingOrder:
    """The order with ``ServiceRequest/<id>`` / ``ImagingStudy/<id>`` references for the resources it came as.

    The EHR's own id is kept (posting the same resource again finds the same order); a resource sent without
    one gets a server id here, as a FHIR create would (R4 http 3.1.0.4). Without a resource store nothing is
    kept, so nothing is named.
    """
    if resources is None:
        return order
    if request and order.service_request_ref is None:
        order = replace(order, service_request_ref=f"ServiceRequest/{uuid.uuid4().hex}")
    if study and order.imaging_study_ref is None:
        order = replace(order, imaging_study_ref=f"ImagingStudy/{uuid.uuid4().hex}")
    return order


def keep(resources: FhirResourceStore, resource: Any, reference: str | None, order: ImagingOrder) -> None:
    """Store `resource` under the id `reference` gives it (``Type/<id>``); an id already kept stays as it was."""
    if not isinstance(resource, dict) or reference is None:
        return
    resource_type, _, resource_id = reference.partition("/")
    if resource_type != resource.get("resourceType") or not _FHIR_ID.fullmatch(resource_id):
        return  # an absolute or foreign reference: the resource lives elsewhere
    now = datetime.now(UTC)
    kept = {
        **resource,
        "id": resource_id,
        "meta": {
            **(resource.get("meta") or {}),
            "versionId": "1",
            "lastUpdated": now.isoformat().replace("+00:00", "Z"),
        },
    }
    identifiers = [
        (str(i.get("system") or ""), str(i["value"]))
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and isinstance(i.get("value"), str)
    ]
    assert order.id is not None
    resources.add(kept, order_id=order.id, patient_ref=order.patient_ref, identifiers=identifiers, stored_at=now)


def entry_references(
    entries: Sequence[Any], found: Sequence[inbound.TransactionOrder], orders: Sequence[ImagingOrder]
) -> dict[str, str]:
    """fullUrl of each ServiceRequest and ImagingStudy entry → the reference of the resource as it will be kept."""
    names: dict[str, str] = {}
    for item, order in zip(found, orders, strict=True):
        for index, reference in (
            (item.request_index, order.service_request_ref),
            (item.study_index, order.imaging_study_ref),
        ):
            full_url = entries[index].get("fullUrl") if index is not None else None
            if isinstance(full_url, str) and full_url and reference:
                names[full_url] = reference
    return names


def rewritten(value: Any, names: Mapping[str, str]) -> Any:
    """`value` with every ``reference`` that is a key of `names` replaced by its value."""
    if isinstance(value, dict):
        return {
            key: names.get(item, item) if key == "reference" and isinstance(item, str) else rewritten(item, names)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [rewritten(item, names) for item in value]
    return value


def entry_response(
    resources: FhirResourceStore | None, accepted: Accepted, index: int, item: inbound.TransactionOrder
) -> mapping.EntryResponse:
    """One transaction entry's outcome: its own resource as kept (R4 http 3.1.0.11.2), else the order's Task."""
    status = "201 Created" if accepted.created else "200 OK"
    task_ref = f"Task/{accepted.job.id}"
    reference = None
    if index == item.request_index:
        reference = accepted.order.service_request_ref
    elif index == item.study_index:
        reference = accepted.order.imaging_study_ref
    kept = None
    if resources is not None and reference is not None:
        resource_type, _, resource_id = reference.partition("/")
        kept = resources.get(resource_type, resource_id) if _FHIR_ID.fullmatch(resource_id) else None
    if kept is None:
        return mapping.EntryResponse(status, task_ref, accepted.task, accepted.job.updated_at)
    return mapping.EntryResponse(
        status,
        f"{reference}/_history/1",
        kept.resource,
        accepted.job.updated_at,
        outcome=mapping.information_outcome(f"the triage of this order is {task_ref}", task_ref),
    )
