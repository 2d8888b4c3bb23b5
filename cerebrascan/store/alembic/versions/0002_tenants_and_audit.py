"""Tenants and the audit trail: patients keyed by (tenant, id), studies by tenant, audit events.

Rows stored before tenants existed belong to the tenant ``default`` (the tenant of every key
that names none), so an upgraded store keeps serving them to the same keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cerebrascan.store.models import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DEFAULT_TENANT = "default"  # as cerebrascan.store.models.DEFAULT_TENANT, frozen for this revision


def _tenant_column() -> sa.Column[str]:
    return sa.Column(
        "tenant", sa.String(64), nullable=False, server_default=sa.text(f"'{DEFAULT_TENANT}'")
    )


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_constraint("fk_studies_patient_id_patients", type_="foreignkey")
        batch.drop_index("ix_studies_patient_timeline")
        batch.add_column(_tenant_column())
    with op.batch_alter_table("patients") as batch:
        batch.add_column(_tenant_column())
        batch.drop_constraint("pk_patients", type_="primary")
        batch.create_primary_key("pk_patients", ["tenant", "id"])
    with op.batch_alter_table("studies") as batch:
        batch.create_foreign_key(
            "fk_studies_tenant_patients", "patients", ["tenant", "patient_id"], ["tenant", "id"]
        )
        batch.create_index(
            "ix_studies_patient_timeline", ["tenant", "patient_id", "study_date", "created_at"]
        )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("key_name", sa.String(64), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("study_id", sa.String(32), nullable=True),
        sa.Column("patient", sa.String(80), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_tenant_at", "audit_events", ["tenant", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_tenant_at", table_name="audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("studies") as batch:
        batch.drop_constraint("fk_studies_tenant_patients", type_="foreignkey")
        batch.drop_index("ix_studies_patient_timeline")
    # patients of other tenants cannot keep their ids under a one-column key
    op.execute(f"DELETE FROM studies WHERE tenant <> '{DEFAULT_TENANT}'")
    op.execute(f"DELETE FROM patients WHERE tenant <> '{DEFAULT_TENANT}'")
    with op.batch_alter_table("patients") as batch:
        batch.drop_constraint("pk_patients", type_="primary")
        batch.create_primary_key("pk_patients", ["id"])
        batch.drop_column("tenant")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("tenant")
        batch.create_foreign_key(
            "fk_studies_patient_id_patients", "patients", ["patient_id"], ["id"]
        )
        batch.create_index(
            "ix_studies_patient_timeline", ["patient_id", "study_date", "created_at"]
        )
