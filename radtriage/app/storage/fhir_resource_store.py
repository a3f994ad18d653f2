"""`FhirResourceStore` (radtriage.fhir.resource_store) on SQLAlchemy Core, SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, and_, func, insert, select
from sqlalchemy.exc import IntegrityError

from ...fhir.resource_store import JsonObject, StoredResource
from .fhir_tables import fhir_resource_identifiers, fhir_resources


class SqlFhirResourceStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(
        self,
        resource: JsonObject,
        *,
        order_id: str,
        patient_ref: str,
        identifiers: Sequence[tuple[str, str]],
        stored_at: datetime,
    ) -> bool:
        resource_type, resource_id = resource["resourceType"], resource["id"]
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(fhir_resources).values(
                        resource_type=resource_type,
                        id=resource_id,
                        order_id=order_id,
                        patient_ref=patient_ref,
                        resource=resource,
                        stored_at=stored_at,
                    )
                )
                rows = [
                    {"resource_type": resource_type, "resource_id": resource_id, "system": s, "value": v}
                    for s, v in dict.fromkeys((s[:255], v[:255]) for s, v in identifiers if v)
                ]
                if rows:
                    connection.execute(insert(fhir_resource_identifiers), rows)
        except IntegrityError:
            return False
        return True

    def get(self, resource_type: str, resource_id: str) -> StoredResource | None:
        query = select(fhir_resources).where(
            fhir_resources.c.resource_type == resource_type, fhir_resources.c.id == resource_id
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return _stored(row) if row is not None else None

    def search(
        self,
        resource_type: str,
        *,
        identifier: tuple[str | None, str] | None = None,
        patient_ref: str | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[list[StoredResource], int]:
        conditions: list[Any] = [fhir_resources.c.resource_type == resource_type]
        if patient_ref is not None:
            conditions.append(fhir_resources.c.patient_ref == patient_ref)
        if identifier is not None:
            system, value = identifier
            matching = select(fhir_resource_identifiers.c.resource_id).where(
                fhir_resource_identifiers.c.resource_type == resource_type,
                fhir_resource_identifiers.c.value == value,
                *([fhir_resource_identifiers.c.system == system] if system is not None else []),
            )
            conditions.append(fhir_resources.c.id.in_(matching))
        where = and_(*conditions)
        with self.engine.connect() as connection:
            total = connection.execute(select(func.count()).select_from(fhir_resources).where(where)).scalar_one()
            rows = connection.execute(
                select(fhir_resources)
                .where(where)
                .order_by(fhir_resources.c.stored_at.desc(), fhir_resources.c.id)
                .offset(offset)
                .limit(limit)
            ).all()
        return [_stored(row) for row in rows], int(total)


def _stored(row: Row[Any]) -> StoredResource:
    m = row._mapping
    return StoredResource(m["resource_type"], m["id"], m["order_id"], m["patient_ref"], dict(m["resource"]))
