"""Initial schema: model registry (records, artifacts, promotions), inspection log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("version", sa.String(80), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "artifacts",
        sa.Column("version", sa.String(80), sa.ForeignKey("models.version"), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("version", sa.String(80), sa.ForeignKey("models.version"), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "inspections",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wafer_id", sa.String(64), nullable=False),
        sa.Column("inspection_point", sa.Integer, nullable=False),
        sa.Column("model_version", sa.String(80), nullable=False),
        sa.Column("anomaly_score", sa.Float, nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("inference_time_ms", sa.Float, nullable=False),
        sa.Column("image_ref", sa.String(256)),
        sa.Column("heatmap_ref", sa.String(256), nullable=False),
    )
    for column in ("created_at", "wafer_id", "decision"):
        op.create_index(f"ix_inspections_{column}", "inspections", [column])


def downgrade() -> None:
    op.drop_table("inspections")
    op.drop_table("promotions")
    op.drop_table("artifacts")
    op.drop_table("models")
