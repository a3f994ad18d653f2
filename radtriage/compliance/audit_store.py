"""The audit store: an append-only, hash-chained table of FHIR AuditEvents, on SQLite or PostgreSQL.

Writing: `append(connection, record)` adds one record inside the caller's transaction, so an audit row commits
or rolls back with the change it describes. `AuditLog(engine).record(record)` is the same in a transaction of
its own, for events that change nothing else (reads, log-ins, refusals).

The chain (see `radtriage.app.storage.audit_tables`): row n holds ``content_sha256`` = sha256 of its canonical
AuditEvent JSON and ``hash`` = sha256("{n}\\n{hash of row n-1}\\n{content_sha256}"). Appends are serialised by
locking the single chain-head row (a no-op UPDATE, which takes a row lock on PostgreSQL and the write lock on
SQLite) before reading it, so two writers can never both extend the same head.

Reading back: `verify(engine)` recomputes the whole chain and names the first record that breaks it — a changed
record, a missing one (deleted), records out of place (reordered), or newest records cut off behind the head.
The database triggers (migration 0003) refuse UPDATE and DELETE; the chain catches whoever disabled them.
What a hash chain alone cannot catch is someone who rewrites *every* row after the one they change *and* the
head: for that, keep the head hash of each export (`radtriage.compliance.export`) outside the database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, Select, func, insert, select, update

from ..app.core.errors import ErrorCode, TriageError
from ..app.storage.audit_tables import audit_chain_head, audit_events
from ..app.storage.database import as_utc as _utc
from . import codes
from .audit import AuditRecord, AuditSource, audit_event_json

GENESIS_HASH = "0" * 64
HEAD_ROW_ID = 1


class AuditStoreError(RuntimeError):
    """The audit store cannot be written (not migrated, or its head row is gone). Fail closed: no audit, no change."""


class AuditQueryError(TriageError):
    """An audit search or export request that cannot be answered as asked (bad range, unknown code)."""

    def __init__(self, detail: str, *, location: str | None = None) -> None:
        super().__init__(ErrorCode.INVALID_INPUT, detail, location=location)


# ---------------------------------------------------------------------------------------------- hashing


def canonical_json(value: Any) -> str:
    """The one text form that is hashed: sorted keys, no whitespace, UTF-8 as is (RFC 8785 for this data)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_sha256(resource_text: str) -> str:
    return hashlib.sha256(resource_text.encode("utf-8")).hexdigest()


def chain_hash(sequence: int, prev_hash: str, content_digest: str) -> str:
    return hashlib.sha256(f"{sequence}\n{prev_hash}\n{content_digest}".encode("ascii")).hexdigest()


# ---------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class ChainHead:
    """The newest record: its id (0 for an empty trail) and hash (`GENESIS_HASH` for an empty trail)."""

    id: int
    hash: str


@dataclass(frozen=True)
class StoredAuditEvent:
    id: int
    recorded: datetime
    kind: str
    action: str
    outcome: int
    client_id: str | None
    patient_ref: str | None = field(repr=False)
    resource_text: str = field(repr=False)
    content_sha256: str
    prev_hash: str
    hash: str

    def resource(self) -> dict[str, Any]:
        """The FHIR AuditEvent as a dict."""
        value: dict[str, Any] = json.loads(self.resource_text)
        return value


@dataclass(frozen=True)
class AuditFilter:
    """What to select: `start` inclusive, `end` exclusive (UTC), and exact matches on the other fields.

    `action` is an AuditEvent.action code (C, R, U, D, E); `kind` a radtriage event code (``order-received``,
    ``authentication-failed``, ...); `client` a client id; `patient` a patient reference as recorded;
    `outcome` 0, 4, 8 or 12; `user` a person's user id (case-insensitive on SQLite, whose LIKE is).
    """

    start: datetime | None = None
    end: datetime | None = None
    patient: str | None = field(default=None, repr=False)
    action: str | None = None
    kind: str | None = None
    client: str | None = None
    outcome: int | None = None
    #: A person's user id (the agent with the user-id system), e.g. a web user name.
    user: str | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                if value.tzinfo is None:
                    raise AuditQueryError(f"{name} needs a time zone", location=name)
                object.__setattr__(self, name, value.astimezone(UTC))
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise AuditQueryError("the end of the range is not after its start", location="end")
        if self.action is not None and self.action not in ("C", "R", "U", "D", "E"):
            raise AuditQueryError("action must be one of C, R, U, D, E", location="action")
        if self.outcome is not None and self.outcome not in (0, 4, 8, 12):
            raise AuditQueryError("outcome must be one of 0, 4, 8, 12", location="outcome")

    def apply(self, query: Select[Any]) -> Select[Any]:
        c = audit_events.c
        if self.start is not None:
            query = query.where(c.recorded >= _db_time(self.start))
        if self.end is not None:
            query = query.where(c.recorded < _db_time(self.end))
        if self.patient is not None:
            query = query.where(c.patient_ref == self.patient)
        if self.action is not None:
            query = query.where(c.action == self.action)
        if self.kind is not None:
            query = query.where(c.kind == self.kind)
        if self.client is not None:
            query = query.where(c.client_id == self.client)
        if self.outcome is not None:
            query = query.where(c.outcome == self.outcome)
        if self.user is not None:
            # The user is not an indexed column: match the agent's identifier in the canonical resource text
            # (sorted keys, no spaces), which is exactly how it is stored.
            identifier = canonical_json({"system": codes.USER_ID_SYSTEM, "value": self.user})
            query = query.where(c.resource.contains(identifier, autoescape=True))
        return query


@dataclass(frozen=True)
class VerifyResult:
    """`ok` when every record checks out; otherwise `first_broken_id` names the first bad record and `reason`
    says what is wrong with it (never any record content)."""

    ok: bool
    checked: int
    first_broken_id: int | None = None
    reason: str | None = None
    head: ChainHead | None = None


def _db_time(value: datetime) -> datetime:
    # SQLite keeps no time zone: every stored time is UTC, written and compared without an offset there.
    return value.astimezone(UTC)


def _parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def indexed_values(resource: dict[str, Any]) -> dict[str, Any]:
    """The searchable columns, read from the AuditEvent itself (used when writing and when verifying)."""
    kind = next(
        (s.get("code") for s in resource.get("subtype", []) if s.get("system") == codes.AUDIT_EVENT_SYSTEM), None
    )
    client_id = None
    for agent in resource.get("agent", []):
        identifier = agent.get("who", {}).get("identifier", {})
        if identifier.get("system") == codes.CLIENT_ID_SYSTEM:
            client_id = identifier.get("value")
            break
    patient_ref = None
    for entity in resource.get("entity", []):
        if (
            entity.get("role", {}).get("code") == codes.ROLE_PATIENT.code
            and entity.get("role", {}).get("system") == codes.OBJECT_ROLE_SYSTEM
        ):
            what = entity.get("what", {})
            if "reference" in what:
                patient_ref = what["reference"]
            else:
                identifier = what.get("identifier", {})
                patient_ref = (
                    f"{identifier['system']}|{identifier['value']}"
                    if "system" in identifier
                    else identifier.get("value")
                )
            break
    return {
        "recorded": _parse_instant(resource["recorded"]),
        "kind": kind,
        "action": resource.get("action"),
        "outcome": int(resource.get("outcome", -1)),
        "client_id": client_id,
        "patient_ref": patient_ref,
    }


def _stored(row: Row[Any]) -> StoredAuditEvent:
    m = row._mapping
    return StoredAuditEvent(
        id=m["id"],
        recorded=_utc(m["recorded"]),
        kind=m["kind"],
        action=m["action"],
        outcome=m["outcome"],
        client_id=m["client_id"],
        patient_ref=m["patient_ref"],
        resource_text=m["resource"],
        content_sha256=m["content_sha256"],
        prev_hash=m["prev_hash"],
        hash=m["hash"],
    )


# ---------------------------------------------------------------------------------------------- writing


def append(connection: Connection, record: AuditRecord, *, source: AuditSource | None = None) -> StoredAuditEvent:
    """Add `record` to the chain inside the transaction `connection` is in (commit is the caller's).

    The head row stays locked until that transaction ends: keep audited transactions short.
    """
    return append_many(connection, (record,), source=source)[0]


def append_many(
    connection: Connection, records: Sequence[AuditRecord], *, source: AuditSource | None = None
) -> list[StoredAuditEvent]:
    """`append` for several records in order: the head is locked and moved once, the rows inserted in one go."""
    if not records:
        return []
    source = source or _default_source()
    locked = connection.execute(
        update(audit_chain_head).where(audit_chain_head.c.id == HEAD_ROW_ID).values(last_id=audit_chain_head.c.last_id)
    )
    if locked.rowcount != 1:
        raise AuditStoreError("the audit chain head is missing; run the database migrations")
    head = connection.execute(
        select(audit_chain_head.c.last_id, audit_chain_head.c.last_hash).where(audit_chain_head.c.id == HEAD_ROW_ID)
    ).one()
    stored: list[StoredAuditEvent] = []
    rows: list[dict[str, Any]] = []
    prev_hash = head.last_hash
    for sequence, record in enumerate(records, start=head.last_id + 1):
        resource = audit_event_json(record, resource_id=str(sequence), source=source)
        text = canonical_json(resource)
        digest = content_sha256(text)
        row_hash = chain_hash(sequence, prev_hash, digest)
        values = indexed_values(resource)
        rows.append(
            {
                "id": sequence,
                "resource": text,
                "content_sha256": digest,
                "prev_hash": prev_hash,
                "hash": row_hash,
                **values,
                "recorded": _db_time(values["recorded"]),
            }
        )
        stored.append(
            StoredAuditEvent(
                id=sequence,
                recorded=values["recorded"],
                kind=values["kind"],
                action=values["action"],
                outcome=values["outcome"],
                client_id=values["client_id"],
                patient_ref=values["patient_ref"],
                resource_text=text,
                content_sha256=digest,
                prev_hash=prev_hash,
                hash=row_hash,
            )
        )
        prev_hash = row_hash
    # The database lets the head advance one record at a time (migration 0003), so it moves once per row; the
    # lock and the read of the head are shared.
    previous_id = head.last_id
    for row in rows:
        connection.execute(insert(audit_events).values(row))
        connection.execute(
            update(audit_chain_head)
            .where(audit_chain_head.c.id == HEAD_ROW_ID, audit_chain_head.c.last_id == previous_id)
            .values(last_id=row["id"], last_hash=row["hash"])
        )
        previous_id = row["id"]
    return stored


_SOURCE: AuditSource | None = None


def _default_source() -> AuditSource:
    global _SOURCE
    if _SOURCE is None:
        _SOURCE = AuditSource.local()
    return _SOURCE


# ---------------------------------------------------------------------------------------------- reading


def read_head(connection: Connection) -> ChainHead:
    row = connection.execute(
        select(audit_chain_head.c.last_id, audit_chain_head.c.last_hash).where(audit_chain_head.c.id == HEAD_ROW_ID)
    ).first()
    if row is None:
        raise AuditStoreError("the audit chain head is missing")
    return ChainHead(row.last_id, row.last_hash)


def iter_events(
    connection: Connection,
    audit_filter: AuditFilter | None = None,
    *,
    after_id: int = 0,
    up_to_id: int | None = None,
    batch_size: int = 1000,
) -> Iterator[StoredAuditEvent]:
    """Matching records in chain order, read in batches (keyset pagination: constant memory on any size)."""
    last = after_id
    while True:
        query = select(audit_events).where(audit_events.c.id > last)
        if up_to_id is not None:
            query = query.where(audit_events.c.id <= up_to_id)
        if audit_filter is not None:
            query = audit_filter.apply(query)
        rows = connection.execute(query.order_by(audit_events.c.id).limit(batch_size)).all()
        for row in rows:
            yield _stored(row)
        if len(rows) < batch_size:
            return
        last = rows[-1].id


def verify_chain(connection: Connection, *, batch_size: int = 1000) -> VerifyResult:
    head: ChainHead | None
    try:
        head = read_head(connection)
    except AuditStoreError:
        head = None
    expected_id, prev_hash, checked = 1, GENESIS_HASH, 0

    def broken(record_id: int | None, reason: str) -> VerifyResult:
        return VerifyResult(False, checked, record_id, reason, head)

    for event in iter_events(connection, batch_size=batch_size):
        if event.id != expected_id:
            missing = f"{expected_id}" if event.id == expected_id + 1 else f"{expected_id} to {event.id - 1}"
            return broken(expected_id, f"record {missing} is missing (deleted)")
        if event.prev_hash != prev_hash:
            return broken(
                event.id,
                f"its previous-hash is not the hash of record {event.id - 1}: "
                "records were reordered, or this record or the one before it was rewritten",
            )
        if content_sha256(event.resource_text) != event.content_sha256:
            return broken(event.id, "its content does not match its content hash (the record was changed)")
        if chain_hash(event.id, event.prev_hash, event.content_sha256) != event.hash:
            return broken(event.id, "its hash does not match its place, content and previous hash")
        try:
            resource = event.resource()
            values = indexed_values(resource)
        except (ValueError, KeyError, TypeError, AttributeError):
            return broken(event.id, "its content is not a readable AuditEvent")
        if resource.get("id") != str(event.id):
            return broken(event.id, "its content names another record id (records were moved)")
        for name, value in values.items():
            if getattr(event, name) != value:
                return broken(event.id, f"its {name} column disagrees with its content")
        prev_hash, expected_id, checked = event.hash, expected_id + 1, checked + 1
    last_id = expected_id - 1
    if head is None:
        return broken(None, "the chain head row is missing")
    if head.id > last_id:
        missing = f"{last_id + 1}" if head.id == last_id + 1 else f"{last_id + 1} to {head.id}"
        return broken(last_id + 1, f"record {missing} is missing (the newest records were deleted)")
    if head.id != last_id or head.hash != prev_hash:
        return broken(head.id + 1 if head.id < last_id else last_id, "the chain head does not match the last record")
    return VerifyResult(True, checked, None, None, head)


def verify(engine: Engine, *, batch_size: int = 1000) -> VerifyResult:
    """Recompute the chain from the first record to the head; see `VerifyResult`."""
    with engine.connect() as connection:
        return verify_chain(connection, batch_size=batch_size)


class RepeatedReads:
    """One audit record per client, resource and minute for repeated identical reads (a client polling a Task).

    The first read in a window is recorded at once, as any read. Identical reads after it in the same window (same
    kind, outcome, who, from where, what, whose) are only counted; when the window has closed, one more record says
    how many there were (``details.repeated``, with the window's start and length). So every read is still in the
    verifiable chain, at a cost of at most two chained appends per client, resource and window instead of one per
    poll. Counts of a window still open live in this process: they are written by `flush` (the application calls
    it when it stops) and lost only if the process dies within that window.
    """

    def __init__(self, log: AuditLog, *, window_s: float = 60.0, max_open: int = 10_000) -> None:
        self.log = log
        self.window_s = window_s
        self.max_open = max_open
        self._open: dict[tuple[Any, ...], tuple[int, AuditRecord, list[int]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(record: AuditRecord) -> tuple[Any, ...]:
        return (
            record.kind.code,
            int(record.outcome),
            record.outcome_description,
            record.interaction,
            record.client_id,
            record.user_id,
            record.role,
            record.token_id,
            record.peer_address,
            record.purpose_of_use,
            record.entities,
            record.patient_ref,
            tuple(sorted(record.details.items())),
        )

    def record(self, record: AuditRecord) -> StoredAuditEvent | None:
        """Record `record`, or count it as a repeat of one recorded in this window (then None)."""
        assert record.recorded is not None
        window = int(record.recorded.timestamp() // self.window_s)
        key = self._key(record)
        with self._lock:
            closed = self._take_closed(window)
            opened = self._open.get(key)
            repeat = opened is not None and opened[0] == window
            if opened is not None and repeat:
                opened[2][0] += 1
            else:
                self._open[key] = (window, record, [0])
        self._write_summaries(closed)
        return None if repeat else self.log.record(record)

    def flush(self) -> int:
        """Write the counts of every window, open or closed; returns how many summary records were written."""
        with self._lock:
            closed = [(window, first, count[0]) for window, first, count in self._open.values() if count[0]]
            self._open.clear()
        self._write_summaries(closed)
        return len(closed)

    def _take_closed(self, current_window: int) -> list[tuple[int, AuditRecord, int]]:
        closed_keys = [k for k, (window, _, _) in self._open.items() if window != current_window]
        if len(self._open) - len(closed_keys) >= self.max_open:  # bounded memory: close the oldest early
            closed_keys.extend(list(self._open)[: len(self._open) // 2])
        closed = []
        for key in dict.fromkeys(closed_keys):
            window, first, count = self._open.pop(key)
            if count[0]:
                closed.append((window, first, count[0]))
        return closed

    def _write_summaries(self, closed: list[tuple[int, AuditRecord, int]]) -> None:
        for window, first, count in closed:
            start = datetime.fromtimestamp(window * self.window_s, UTC)
            details = {
                **first.details,
                "repeated": str(count),
                "window-start": start.isoformat(),
                "window-seconds": f"{self.window_s:g}",
            }
            self.log.record(dataclasses.replace(first, recorded=datetime.now(UTC), request_id=None, details=details))


class AuditLog:
    """The audit store on one engine: record events in their own transaction, search, read the head, verify."""

    def __init__(self, engine: Engine, *, source: AuditSource | None = None) -> None:
        self.engine = engine
        self.source = source
        self.repeated_reads = RepeatedReads(self)

    def record(self, record: AuditRecord) -> StoredAuditEvent:
        with self.engine.begin() as connection:
            return append(connection, record, source=self.source)

    def record_read(self, record: AuditRecord) -> StoredAuditEvent | None:
        """Record a read, counting identical repeats within a minute instead of chaining each (`RepeatedReads`)."""
        return self.repeated_reads.record(record)

    def flush(self) -> int:
        """Write the counts of repeated reads still held in memory (call before the process stops)."""
        return self.repeated_reads.flush()

    def append(self, connection: Connection, record: AuditRecord) -> StoredAuditEvent:
        """`append` with this log's source, inside the caller's transaction."""
        return append(connection, record, source=self.source)

    def append_many(self, connection: Connection, records: Sequence[AuditRecord]) -> list[StoredAuditEvent]:
        """`append_many` with this log's source, inside the caller's transaction."""
        return append_many(connection, records, source=self.source)

    def head(self) -> ChainHead:
        with self.engine.connect() as connection:
            return read_head(connection)

    def get(self, record_id: int) -> StoredAuditEvent | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(audit_events).where(audit_events.c.id == record_id)).first()
        return _stored(row) if row else None

    def search(
        self, audit_filter: AuditFilter | None = None, *, offset: int = 0, limit: int = 50
    ) -> tuple[list[StoredAuditEvent], int]:
        """Matching records, newest first, and how many match in all (for FHIR search paging)."""
        query = select(audit_events)
        if audit_filter is not None:
            query = audit_filter.apply(query)
        with self.engine.connect() as connection:
            total = connection.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            rows = connection.execute(query.order_by(audit_events.c.id.desc()).offset(offset).limit(limit)).all()
        return [_stored(r) for r in rows], total

    def verify(self, *, batch_size: int = 1000) -> VerifyResult:
        return verify(self.engine, batch_size=batch_size)
