"""Audit export for compliance officers, and verification of an export on its own, later, without the database.

Formats: FHIR NDJSON (one AuditEvent per line), a FHIR Bundle of type ``collection``, and CSV. Whatever the
format, an export carries a *chain proof* that ties every exported record to the chain head at export time:

* each exported AuditEvent carries its place in the chain (extension ``…/StructureDefinition/audit-chain``:
  ``sequence``, ``previous-hash``, ``content-sha256``, ``hash``; in CSV, columns of those names);
* a FHIR ``Parameters`` resource (``id`` = ``audit-chain-proof``; in CSV, ``link``/``start``/``head`` rows)
  gives the head (``head-id``, ``head-hash``), where the proof starts (``start-id``, ``start-previous-hash``)
  and, for every record between the first exported one and the head that the filter left out, only its id and
  content hash (``link``) — no content, so no patient data the filter excluded.

`verify_export` recomputes each exported record's content hash and the chain from ``start-id`` to the head: a
record changed, removed or moved in the file breaks it. Compare the head hash with the one noted at export time
(the export is audited with it) or check it against the live database (`verify_export(path, engine=engine)`).

Time ranges: `start` is inclusive; `end` is inclusive at the precision given ("2024-03-31" includes that whole
day); a date-time needs a time zone, as FHIR requires.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, func, select

from ..app.storage.audit_tables import audit_events
from . import codes
from .audit import AUDIT_EXPORTED, EVENT_KINDS, AuditContext, AuditOutcome, AuditRecord
from .audit_store import (
    GENESIS_HASH,
    AuditFilter,
    AuditLog,
    AuditQueryError,
    ChainHead,
    StoredAuditEvent,
    canonical_json,
    chain_hash,
    content_sha256,
    indexed_values,
    iter_events,
    read_head,
)

PROOF_ID = "audit-chain-proof"
CSV_COLUMNS = (
    "row_type",
    "id",
    "recorded",
    "kind",
    "action",
    "outcome",
    "client_id",
    "user_id",
    "patient_ref",
    "content_sha256",
    "prev_hash",
    "hash",
    "resource",
)
#: The CSV header before the user column was added: such exports still verify.
LEGACY_CSV_COLUMNS = tuple(c for c in CSV_COLUMNS if c != "user_id")


def user_of(resource: dict[str, Any]) -> str | None:
    """The person (agent with the user-id identifier) an AuditEvent names, if any."""
    for agent in resource.get("agent") or []:
        identifier = (agent.get("who") or {}).get("identifier") or {}
        if identifier.get("system") == codes.USER_ID_SYSTEM:
            value = identifier.get("value")
            return str(value) if value is not None else None
    return None


class ExportFormat(StrEnum):
    NDJSON = "ndjson"
    BUNDLE = "bundle"
    CSV = "csv"

    @property
    def media_type(self) -> str:
        return {
            ExportFormat.NDJSON: "application/fhir+ndjson",
            ExportFormat.BUNDLE: "application/fhir+json",
            ExportFormat.CSV: "text/csv",
        }[self]

    @classmethod
    def parse(cls, text: str) -> ExportFormat:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise AuditQueryError("format must be ndjson, bundle or csv", location="format") from None


@dataclass(frozen=True)
class ExportSummary:
    format: ExportFormat
    records: int
    head: ChainHead
    start_id: int | None
    audit_record_id: int | None = None  # the audit record of this export


@dataclass(frozen=True)
class ExportVerifyResult:
    ok: bool
    records: int
    head: ChainHead | None
    first_broken_id: int | None = None
    reason: str | None = None


# ---------------------------------------------------------------------------------------------- parsing requests

_DATE = re.compile(r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2}))?)?$")


def parse_time(text: str, *, name: str, end: bool = False) -> datetime:
    """A FHIR date (YYYY, YYYY-MM, YYYY-MM-DD) or dateTime with time zone, as a UTC instant.

    For a range end (`end`), the instant just after the period the value names, so that ends are inclusive.
    """
    value = text.strip()
    match = _DATE.match(value)
    try:
        if match:
            year, month, day = int(match["y"]), int(match["m"] or 1), int(match["d"] or 1)
            start = datetime(year, month, day, tzinfo=UTC)
            if not end:
                return start
            if match["d"]:
                return start + timedelta(days=1)
            if match["m"]:
                return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            return datetime(year + 1, 1, 1, tzinfo=UTC)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AuditQueryError(f"{name} is not a FHIR date or date-time", location=name) from None
    if moment.tzinfo is None:
        raise AuditQueryError(f"{name} has a time but no time zone (add Z or ±hh:mm)", location=name)
    moment = moment.astimezone(UTC)
    return moment + timedelta(microseconds=1) if end else moment


def build_filter(
    *,
    start: str | None = None,
    end: str | None = None,
    patient: str | None = None,
    action: str | None = None,
    kind: str | None = None,
    client: str | None = None,
    outcome: str | int | None = None,
    user: str | None = None,
) -> AuditFilter:
    """An `AuditFilter` from text (command-line options, query parameters); bad values raise `AuditQueryError`."""
    if kind is not None and kind not in EVENT_KINDS:
        raise AuditQueryError("unknown audit event kind", location="kind")
    outcome_value: int | None = None
    if outcome is not None and outcome != "":
        try:
            outcome_value = int(outcome)
        except ValueError:
            raise AuditQueryError("outcome must be one of 0, 4, 8, 12", location="outcome") from None
    return AuditFilter(
        start=parse_time(start, name="start") if start else None,
        end=parse_time(end, name="end", end=True) if end else None,
        patient=patient or None,
        action=action.upper() if action else None,
        kind=kind,
        client=client or None,
        outcome=outcome_value,
        user=user or None,
    )


_PREFIX = re.compile(r"^(eq|ge|gt|le|lt)?(.+)$")


def filter_from_fhir_search(params: Mapping[str, Sequence[str]]) -> AuditFilter:
    """An `AuditFilter` from FHIR AuditEvent search parameters (FHIR R4 AuditEvent "Search Parameters").

    Supported: ``date`` (prefixes eq, ge, gt, le, lt; repeatable), ``patient``, ``action``, ``subtype`` (a
    radtriage event code, optionally as ``system|code``), ``agent`` (a client id, optionally ``system|value``)
    and ``outcome``. Parameters starting with ``_`` (paging, format) are left to the caller; any other is refused,
    so that a search never silently returns more than was asked for.
    """
    start: datetime | None = None
    end: datetime | None = None
    single: dict[str, str] = {}
    for name, values in params.items():
        if name.startswith("_"):
            continue
        if name == "date":
            for raw in values:
                match = _PREFIX.match(raw.strip())
                assert match is not None
                prefix, text = match.group(1) or "eq", match.group(2)
                if prefix in ("ge", "eq"):
                    start = max(filter(None, [start, parse_time(text, name="date")]))
                if prefix == "gt":
                    start = max(filter(None, [start, parse_time(text, name="date", end=True)]))
                if prefix in ("le", "eq"):
                    end = min(filter(None, [end, parse_time(text, name="date", end=True)]))
                if prefix == "lt":
                    end = min(filter(None, [end, parse_time(text, name="date")]))
            continue
        if name not in ("patient", "action", "subtype", "agent", "outcome"):
            raise AuditQueryError(f"unsupported search parameter {name!r}", location=name)
        if len(values) != 1:
            raise AuditQueryError(f"search parameter {name!r} may be given once", location=name)
        single[name] = values[0]
    kind = single.get("subtype")
    if kind and "|" in kind:
        system, _, kind = kind.partition("|")
        if system and system != codes.AUDIT_EVENT_SYSTEM:
            raise AuditQueryError("subtype system is not radtriage's audit event system", location="subtype")
    client = single.get("agent")
    if client and "|" in client:
        system, _, client = client.partition("|")
        if system and system != codes.CLIENT_ID_SYSTEM:
            raise AuditQueryError("agent identifier system is not radtriage's client id system", location="agent")
    if kind is not None and kind not in EVENT_KINDS:
        raise AuditQueryError("unknown audit event subtype", location="subtype")
    outcome = single.get("outcome")
    try:
        outcome_value = int(outcome) if outcome is not None else None
    except ValueError:
        raise AuditQueryError("outcome must be one of 0, 4, 8, 12", location="outcome") from None
    return AuditFilter(
        start=start,
        end=end,
        patient=single.get("patient"),
        action=single.get("action", "").upper() or None,
        kind=kind,
        client=client,
        outcome=outcome_value,
    )


# ---------------------------------------------------------------------------------------------- writing


def _chain_extension(event: StoredAuditEvent) -> dict[str, Any]:
    return {
        "url": codes.AUDIT_CHAIN_EXTENSION,
        "extension": [
            {"url": "sequence", "valueInteger": event.id},
            {"url": "previous-hash", "valueString": event.prev_hash},
            {"url": "content-sha256", "valueString": event.content_sha256},
            {"url": "hash", "valueString": event.hash},
        ],
    }


def _exported_resource(event: StoredAuditEvent) -> dict[str, Any]:
    resource = event.resource()
    resource.setdefault("extension", []).append(_chain_extension(event))
    return resource


def _first_matching_id(connection: Connection, audit_filter: AuditFilter, head: ChainHead) -> int | None:
    query = audit_filter.apply(select(func.min(audit_events.c.id)).where(audit_events.c.id <= head.id))
    value = connection.execute(query).scalar()
    return int(value) if value is not None else None


def _links(connection: Connection, start_id: int, head: ChainHead, exported: set[int]) -> Iterator[tuple[int, str]]:
    """(id, content hash) of every record from `start_id` to the head that is not in the export."""
    last = start_id - 1
    while True:
        rows = connection.execute(
            select(audit_events.c.id, audit_events.c.content_sha256)
            .where(audit_events.c.id > last, audit_events.c.id <= head.id)
            .order_by(audit_events.c.id)
            .limit(5000)
        ).all()
        for row in rows:
            if row.id not in exported:
                yield row.id, row.content_sha256
        if len(rows) < 5000:
            return
        last = rows[-1].id


def _proof_parameters(
    head: ChainHead, start_id: int | None, start_prev: str | None, records: int, links: Iterator[tuple[int, str]]
) -> Iterator[str]:
    """The proof resource as JSON text chunks (streamed: the link list can be long)."""
    params: list[dict[str, Any]] = [
        {"name": "head-id", "valueInteger": head.id},
        {"name": "head-hash", "valueString": head.hash},
        {"name": "exported", "valueInteger": records},
        {"name": "generated", "valueInstant": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
    ]
    if start_id is not None and start_prev is not None:
        params += [
            {"name": "start-id", "valueInteger": start_id},
            {"name": "start-previous-hash", "valueString": start_prev},
        ]
    yield '{"resourceType":"Parameters","id":"' + PROOF_ID + '","parameter":['
    yield ",".join(json.dumps(p, separators=(",", ":")) for p in params)
    for link_id, digest in links:
        part = {
            "name": "link",
            "part": [{"name": "id", "valueInteger": link_id}, {"name": "content-sha256", "valueString": digest}],
        }
        yield "," + json.dumps(part, separators=(",", ":"))
    yield "]}"


def _proof_row(row_type: str, row_id: int, **values: str) -> list[Any]:
    """A CSV row of the chain proof: its type and id, the named columns, the rest empty."""
    return [row_type, row_id, *(values.get(name, "") for name in CSV_COLUMNS[2:])]


def write_export(connection: Connection, out: IO[str], audit_filter: AuditFilter, fmt: ExportFormat) -> ExportSummary:
    """Write the records matching `audit_filter` and their chain proof to `out`. Reads only; audits nothing."""
    head = read_head(connection)
    start_id = _first_matching_id(connection, audit_filter, head)
    exported: set[int] = set()
    start_prev: str | None = None
    csv_writer = csv.writer(out, lineterminator="\n") if fmt is ExportFormat.CSV else None
    if csv_writer:
        csv_writer.writerow(CSV_COLUMNS)
    elif fmt is ExportFormat.BUNDLE:
        out.write('{"resourceType":"Bundle","type":"collection","timestamp":"')
        out.write(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") + '","entry":[')
    if start_id is not None:
        for event in iter_events(connection, audit_filter, after_id=start_id - 1, up_to_id=head.id):
            if start_prev is None:
                start_prev = event.prev_hash
            exported.add(event.id)
            if csv_writer:
                csv_writer.writerow(
                    [
                        "record",
                        event.id,
                        event.recorded.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        event.kind,
                        event.action,
                        event.outcome,
                        event.client_id or "",
                        user_of(event.resource()) or "",
                        event.patient_ref or "",
                        event.content_sha256,
                        event.prev_hash,
                        event.hash,
                        event.resource_text,
                    ]
                )
            elif fmt is ExportFormat.BUNDLE:
                out.write(("," if len(exported) > 1 else "") + '{"resource":')
                out.write(json.dumps(_exported_resource(event), ensure_ascii=False, separators=(",", ":")) + "}")
            else:
                out.write(json.dumps(_exported_resource(event), ensure_ascii=False, separators=(",", ":")) + "\n")
    links = _links(connection, start_id, head, exported) if start_id is not None else iter(())
    if csv_writer:
        for link_id, digest in links:
            csv_writer.writerow(_proof_row("link", link_id, content_sha256=digest))
        if start_id is not None:
            csv_writer.writerow(_proof_row("start", start_id, prev_hash=start_prev or ""))
        csv_writer.writerow(_proof_row("head", head.id, hash=head.hash))
    else:
        chunks = _proof_parameters(head, start_id, start_prev, len(exported), links)
        if fmt is ExportFormat.BUNDLE:
            out.write(("," if exported else "") + '{"resource":')
            out.writelines(chunks)
            out.write("}]}")
        else:
            out.writelines(chunks)
            out.write("\n")
    return ExportSummary(fmt, len(exported), head, start_id)


def export_audit(
    log: AuditLog,
    out: IO[str],
    *,
    fmt: ExportFormat | str = ExportFormat.NDJSON,
    start: str | None = None,
    end: str | None = None,
    patient: str | None = None,
    action: str | None = None,
    kind: str | None = None,
    client: str | None = None,
    outcome: str | int | None = None,
    context: AuditContext | None = None,
    user: str | None = None,
) -> ExportSummary:
    """Parse the request, write the export, and audit it (a refused request is audited too, then re-raised).

    `context` is the compliance officer's or client's `AuditContext` (who asked, from where).
    """
    requested = {
        "start": start, "end": end, "action": action, "kind": kind, "client": client, "outcome": outcome, "user": user,
    }  # fmt: skip
    described = ",".join(f"{k}={v}" for k, v in requested.items() if v not in (None, ""))
    base = AuditRecord.in_context(
        AUDIT_EXPORTED,
        context,
        patient_ref=patient or None,
        query=described + (",patient" if patient else ""),
        purpose_of_use=(context.purpose_of_use if context and context.purpose_of_use else "HCOMPL"),
    )
    try:
        export_format = ExportFormat.parse(fmt) if isinstance(fmt, str) else fmt
        audit_filter = build_filter(
            start=start, end=end, patient=patient, action=action, kind=kind, client=client, outcome=outcome, user=user
        )
    except AuditQueryError as error:
        log.record(base.with_outcome(AuditOutcome.MINOR_FAILURE, error.code.value))
        raise
    with log.engine.connect() as connection:
        summary = write_export(connection, out, audit_filter, export_format)
    stored = log.record(
        AuditRecord(
            **{
                **_fields(base),
                "recorded": None,  # now, after the export was written
                "details": {
                    "format": export_format.value,
                    "records": str(summary.records),
                    "head-id": str(summary.head.id),
                    "head-hash": summary.head.hash,
                },
            }
        )
    )
    return ExportSummary(summary.format, summary.records, summary.head, summary.start_id, stored.id)


def _fields(record: AuditRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


# ---------------------------------------------------------------------------------------------- verifying


@dataclass
class _Parsed:
    records: dict[int, tuple[str, str, str, str]]  # id -> (prev, stated content hash, stated hash, actual content)
    links: dict[int, str]
    head: ChainHead | None = None
    start_id: int | None = None
    start_prev: str | None = None
    duplicate: int | None = None


def _strip_chain(resource: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    extensions = resource.get("extension", [])
    chain = next((e for e in extensions if e.get("url") == codes.AUDIT_CHAIN_EXTENSION), None)
    rest = [e for e in extensions if e is not chain]
    resource = {k: v for k, v in resource.items() if k != "extension"}
    if rest:
        resource["extension"] = rest
    return chain, resource


def _add_record(parsed: _Parsed, resource: dict[str, Any]) -> None:
    chain, original = _strip_chain(resource)
    if chain is None:
        raise ValueError("an exported AuditEvent has no chain extension")
    values = {e["url"]: e.get("valueInteger", e.get("valueString")) for e in chain["extension"]}
    record_id = int(values["sequence"])
    if str(original.get("id")) != str(record_id):
        raise ValueError(f"record {record_id}: its resource names another id")
    if record_id in parsed.records:
        parsed.duplicate = record_id
    parsed.records[record_id] = (
        str(values["previous-hash"]),
        str(values["content-sha256"]),
        str(values["hash"]),
        content_sha256(canonical_json(original)),
    )


def _add_proof(parsed: _Parsed, proof: dict[str, Any]) -> None:
    for param in proof.get("parameter", []):
        name = param.get("name")
        if name == "head-id":
            parsed.head = ChainHead(int(param["valueInteger"]), parsed.head.hash if parsed.head else "")
        elif name == "head-hash":
            parsed.head = ChainHead(parsed.head.id if parsed.head else -1, str(param["valueString"]))
        elif name == "start-id":
            parsed.start_id = int(param["valueInteger"])
        elif name == "start-previous-hash":
            parsed.start_prev = str(param["valueString"])
        elif name == "link":
            parts = {p["name"]: p.get("valueInteger", p.get("valueString")) for p in param.get("part", [])}
            parsed.links[int(parts["id"])] = str(parts["content-sha256"])


def _parse_json_resources(resources: Iterator[dict[str, Any]]) -> _Parsed:
    parsed = _Parsed({}, {})
    for resource in resources:
        kind = resource.get("resourceType")
        if kind == "AuditEvent":
            _add_record(parsed, resource)
        elif kind == "Parameters" and resource.get("id") == PROOF_ID:
            _add_proof(parsed, resource)
        else:
            raise ValueError(f"unexpected {kind} in an audit export")
    return parsed


def _parse_csv(text: str) -> _Parsed:
    parsed = _Parsed({}, {})
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) not in (CSV_COLUMNS, LEGACY_CSV_COLUMNS):
        raise ValueError("the CSV header is not an audit export's")
    for row in reader:
        row_type, row_id = row["row_type"], int(row["id"])
        if row_type == "record":
            if row_id in parsed.records:
                parsed.duplicate = row_id
            resource = json.loads(row["resource"])
            # The columns repeat values of the resource; a changed column is a changed export.
            if str(resource.get("id")) != str(row_id):
                raise ValueError(f"record {row_id}: its resource names another id")
            values = indexed_values(resource)
            columns = {
                "recorded": values["recorded"].strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "kind": values["kind"] or "",
                "action": values["action"] or "",
                "outcome": str(values["outcome"]),
                "client_id": values["client_id"] or "",
                "patient_ref": values["patient_ref"] or "",
            }
            if "user_id" in row:
                columns["user_id"] = user_of(resource) or ""
            changed = [name for name, value in columns.items() if row[name] != value]
            if changed:
                raise ValueError(f"record {row_id}: column {changed[0]} disagrees with its resource")
            parsed.records[row_id] = (
                row["prev_hash"],
                row["content_sha256"],
                row["hash"],
                content_sha256(canonical_json(resource)),
            )
        elif row_type == "link":
            parsed.links[row_id] = row["content_sha256"]
        elif row_type == "start":
            parsed.start_id, parsed.start_prev = row_id, row["prev_hash"]
        elif row_type == "head":
            parsed.head = ChainHead(row_id, row["hash"])
        else:
            raise ValueError(f"unknown row type {row_type!r}")
    return parsed


def _parse_export(text: str) -> _Parsed:
    stripped = text.lstrip()
    if not stripped:
        raise ValueError("the file is empty")
    if not stripped.startswith(("{", "row_type")):
        raise ValueError("it is neither FHIR JSON (NDJSON or a Bundle) nor a radtriage audit CSV")
    if stripped.startswith("{"):
        try:  # a Bundle is one JSON document (on one line or many); NDJSON is one document per line
            document = json.loads(stripped)
        except json.JSONDecodeError:
            document = None
        if isinstance(document, dict) and document.get("resourceType") == "Bundle":
            return _parse_json_resources(entry["resource"] for entry in document.get("entry", []))
        return _parse_json_resources(json.loads(line) for line in stripped.splitlines() if line.strip())
    return _parse_csv(text)


def verify_export(source: str | Path | IO[str], *, engine: Engine | None = None) -> ExportVerifyResult:
    """Check an export (a path, or an open text file) on its own; with `engine`, also that its head is in the
    database's chain. Never raises for a bad file: the result says what is wrong."""
    if isinstance(source, (str, Path)):
        text = Path(source).read_text(encoding="utf-8")
    else:
        text = source.read()
    try:
        parsed = _parse_export(text)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return ExportVerifyResult(False, 0, None, None, f"the file is not a readable audit export ({error})")
    count = len(parsed.records)
    head = parsed.head
    if head is None or head.id < 0 or not head.hash:
        return ExportVerifyResult(
            False,
            count,
            None,
            None,
            "the export has no chain head (its proof comes last: the file may be truncated or not an audit export)",
        )
    if parsed.duplicate is not None:
        return ExportVerifyResult(False, count, head, parsed.duplicate, f"record {parsed.duplicate} appears twice")

    def broken(record_id: int | None, reason: str) -> ExportVerifyResult:
        return ExportVerifyResult(False, count, head, record_id, reason)

    for record_id, (_prev, stated, _hash, actual) in sorted(parsed.records.items()):
        if stated != actual:
            return broken(record_id, f"record {record_id} was changed (its content does not match its hash)")
    if parsed.start_id is None:
        if parsed.records or parsed.links:
            return broken(None, "the export has records but no proof start")
    else:
        if parsed.start_prev is None:
            return broken(parsed.start_id, "the proof has no start hash")
        outside = [i for i in [*parsed.records, *parsed.links] if not parsed.start_id <= i <= head.id]
        if outside:
            return broken(min(outside), f"record {min(outside)} lies outside the proven range")
        current = parsed.start_prev
        if parsed.start_id == 1 and current != GENESIS_HASH:
            return broken(1, "the proof does not start at the beginning of the chain")
        for record_id in range(parsed.start_id, head.id + 1):
            if record_id in parsed.records:
                prev, digest, stated_hash, _actual = parsed.records[record_id]
                if prev != current:
                    return broken(record_id, f"record {record_id} is out of place (its previous hash does not match)")
                current = chain_hash(record_id, current, digest)
                if stated_hash != current:
                    return broken(record_id, f"record {record_id}'s hash does not match the chain")
            elif record_id in parsed.links:
                current = chain_hash(record_id, current, parsed.links[record_id])
            else:
                return broken(record_id, f"record {record_id} is missing from the export")
        if current != head.hash:
            return broken(head.id, "the chain in the export does not lead to its head hash")
    if engine is not None and head.id > 0:
        with engine.connect() as connection:
            stored = connection.execute(select(audit_events.c.hash).where(audit_events.c.id == head.id)).scalar()
        if stored != head.hash:
            return broken(head.id, "the export's head is not in the database's audit chain")
    return ExportVerifyResult(True, count, head)
