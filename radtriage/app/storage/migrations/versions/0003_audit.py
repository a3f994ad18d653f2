"""audit trail: hash-chained, append-only audit events; chain head; seen OAuth assertion ids

Revision ID: 0003
Revises: 0002

The database itself refuses to change or remove audit rows, so that neither a bug nor a user of the service's
database account can rewrite history by accident; an attacker who drops the triggers is caught by the hash
chain (`radtriage audit verify`). On PostgreSQL the production account should in addition own neither table,
so that it cannot drop the triggers (see the README's deployment notes).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64

SQLITE_TRIGGERS = [
    """CREATE TRIGGER audit_events_refuse_update BEFORE UPDATE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END""",
    """CREATE TRIGGER audit_events_refuse_delete BEFORE DELETE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END""",
    # The head may stay as it is (appenders lock it with a no-op update) or advance by exactly one row, to a
    # row that exists with that hash; it can never be deleted.
    """CREATE TRIGGER audit_chain_head_advance_only BEFORE UPDATE ON audit_chain_head
       WHEN NOT (
         (NEW.id = OLD.id AND NEW.last_id = OLD.last_id AND NEW.last_hash = OLD.last_hash)
         OR (NEW.id = OLD.id AND NEW.last_id = OLD.last_id + 1
             AND EXISTS (SELECT 1 FROM audit_events WHERE id = NEW.last_id AND hash = NEW.last_hash))
       )
       BEGIN SELECT RAISE(ABORT, 'audit_chain_head only advances to the newest audit event'); END""",
    """CREATE TRIGGER audit_chain_head_refuse_delete BEFORE DELETE ON audit_chain_head
       BEGIN SELECT RAISE(ABORT, 'audit_chain_head cannot be deleted'); END""",
]

POSTGRESQL_TRIGGERS = [
    """CREATE FUNCTION radtriage_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
       END $$""",
    """CREATE TRIGGER audit_events_refuse_update_delete BEFORE UPDATE OR DELETE ON audit_events
       FOR EACH ROW EXECUTE FUNCTION radtriage_audit_refuse_change()""",
    """CREATE TRIGGER audit_events_refuse_truncate BEFORE TRUNCATE ON audit_events
       FOR EACH STATEMENT EXECUTE FUNCTION radtriage_audit_refuse_change()""",
    """CREATE FUNCTION radtriage_audit_head_advance_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND (
              (NEW.last_id = OLD.last_id AND NEW.last_hash = OLD.last_hash)
              OR (NEW.last_id = OLD.last_id + 1 AND EXISTS (
                    SELECT 1 FROM audit_events WHERE id = NEW.last_id AND hash = NEW.last_hash))) THEN
           RETURN NEW;
         END IF;
         RAISE EXCEPTION 'audit_chain_head only advances to the newest audit event'
           USING ERRCODE = 'insufficient_privilege';
       END $$""",
    """CREATE TRIGGER audit_chain_head_advance_only BEFORE UPDATE OR DELETE ON audit_chain_head
       FOR EACH ROW EXECUTE FUNCTION radtriage_audit_head_advance_only()""",
    """CREATE TRIGGER audit_chain_head_refuse_truncate BEFORE TRUNCATE ON audit_chain_head
       FOR EACH STATEMENT EXECUTE FUNCTION radtriage_audit_refuse_change()""",
]


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("recorded", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=1), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=True),
        sa.Column("patient_ref", sa.String(length=255), nullable=True),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_client_id", ["client_id"], unique=False)
        batch_op.create_index("ix_audit_events_patient_ref", ["patient_ref"], unique=False)
        batch_op.create_index("ix_audit_events_recorded", ["recorded"], unique=False)

    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    op.bulk_insert(head, [{"id": 1, "last_id": 0, "last_hash": GENESIS_HASH}])

    op.create_table(
        "oauth_seen_jti",
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_oauth_seen_jti")),
    )
    with op.batch_alter_table("oauth_seen_jti", schema=None) as batch_op:
        batch_op.create_index("ix_oauth_seen_jti_expires_at", ["expires_at"], unique=False)

    dialect = op.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"append-only audit triggers are written for SQLite and PostgreSQL, not {dialect}")
    for statement in POSTGRESQL_TRIGGERS if dialect == "postgresql" else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    # Downgrading destroys the audit trail; it exists for development databases only.
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TABLE IF EXISTS audit_events, audit_chain_head CASCADE")
        op.execute("DROP FUNCTION IF EXISTS radtriage_audit_refuse_change()")
        op.execute("DROP FUNCTION IF EXISTS radtriage_audit_head_advance_only()")
    else:
        op.execute("DROP TABLE IF EXISTS audit_events")
        op.execute("DROP TABLE IF EXISTS audit_chain_head")
    with op.batch_alter_table("oauth_seen_jti", schema=None) as batch_op:
        batch_op.drop_index("ix_oauth_seen_jti_expires_at")
    op.drop_table("oauth_seen_jti")
