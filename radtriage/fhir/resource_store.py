"""The FHIR door's port for the order resources it keeps: ServiceRequests and ImagingStudies as the EHR sent them.

The core knows orders, not FHIR resources; what a FHIR client needs to read back (``Task.basedOn`` →
``ServiceRequest/<id>``) is the door's business, so the port lives here. The SQL adapter is
`radtriage.app.storage.fhir_resource_store.SqlFhirResourceStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class StoredResource:
    resource_type: str
    id: str
    order_id: str
    patient_ref: str
    resource: JsonObject


class FhirResourceStore(Protocol):
    def add(
        self,
        resource: JsonObject,
        *,
        order_id: str,
        patient_ref: str,
        identifiers: Sequence[tuple[str, str]],
        stored_at: datetime,
    ) -> bool:
        """Keep `resource` (with its ``resourceType`` and ``id``) for `order_id`; False when that id is taken."""
        ...

    def get(self, resource_type: str, resource_id: str) -> StoredResource | None: ...

    def search(
        self,
        resource_type: str,
        *,
        identifier: tuple[str | None, str] | None = None,
        patient_ref: str | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[list[StoredResource], int]:
        """Matches, newest first, and their total. `identifier` is (system or None for any, value)."""
        ...
