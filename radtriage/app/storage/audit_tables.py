"""Tables of the audit trail (issue 5), on the shared `metadata`. Migration 0003 creates them with the triggers
that make `audit_events` append-only; `radtriage.compliance.audit_store` is the only code that writes them.

``audit_events`` is a hash chain: row ``id`` = n (1, 2, 3, ... without gaps) stores ``prev_hash`` (row n-1's
``hash``, or 64 zeros for row 1), ``content_sha256`` (sha256 of ``resource``, the canonical JSON of the FHIR
AuditEvent) and ``hash`` = sha256("{id}\\n{prev_hash}\\n{content_sha256}"). The other columns repeat values from
``resource`` so that exports can filter with indexes; verification checks that they agree with it.

``audit_chain_head`` has one row (id 1) naming the last record. Appenders lock it, which serialises appends on
every database, and the verifier compares it with the last row, so deleting the newest records is detected.

``oauth_seen_jti`` remembers the ``jti`` of every client assertion until it expires, so that a replayed
assertion is refused even by another process (SMART Backend Services: the server must not accept a jti twice).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text

from .tables import metadata

HASH = 64  # sha256 hex

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("recorded", DateTime(timezone=True), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("action", String(1), nullable=False),
    Column("outcome", Integer, nullable=False),
    Column("client_id", String(255)),
    Column("patient_ref", String(255)),
    Column("resource", Text, nullable=False),
    Column("content_sha256", String(HASH), nullable=False),
    Column("prev_hash", String(HASH), nullable=False),
    Column("hash", String(HASH), nullable=False),
)
Index("ix_audit_events_recorded", audit_events.c.recorded)
Index("ix_audit_events_patient_ref", audit_events.c.patient_ref)
Index("ix_audit_events_client_id", audit_events.c.client_id)

audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_id", Integer, nullable=False),
    Column("last_hash", String(HASH), nullable=False),
)

oauth_seen_jti = Table(
    "oauth_seen_jti",
    metadata,
    # issuer + "|" + jti: a jti is unique per issuer (RFC 7519 4.1.7), here per client.
    Column("key", String(512), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
Index("ix_oauth_seen_jti_expires_at", oauth_seen_jti.c.expires_at)
