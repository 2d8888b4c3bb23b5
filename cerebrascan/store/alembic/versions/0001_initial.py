"""Initial study store: patients and studies.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cerebrascan.store.models import JSONDocument, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", sa.String(80), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_patients"),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("patient_id", sa.String(80), nullable=True),
        sa.Column("study_date", sa.Date(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("analyzer_versions", JSONDocument, nullable=False),
        sa.Column("findings", JSONDocument, nullable=False),
        sa.Column("artefacts", JSONDocument, nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name="fk_studies_patient_id_patients"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_studies"),
    )
    op.create_index(
        "ix_studies_patient_timeline", "studies", ["patient_id", "study_date", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_studies_patient_timeline", table_name="studies")
    op.drop_table("studies")
    op.drop_table("patients")
