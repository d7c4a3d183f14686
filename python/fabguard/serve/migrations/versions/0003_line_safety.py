"""Safe model changes on the line: shadow and canary experiments, shadow scores, the review queue and its
labels, the latent vector of each inspection (drift), and an event log (alerts, guardrail, rollbacks).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inspections") as batch:
        batch.add_column(sa.Column("arm", sa.String(10), nullable=False, server_default="production"))
        batch.add_column(sa.Column("latent", sa.LargeBinary))
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("candidate", sa.String(80), sa.ForeignKey("models.version"), nullable=False),
        sa.Column("baseline", sa.String(80), sa.ForeignKey("models.version"), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("share", sa.Float, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("note", sa.Text),
    )
    op.create_table(
        "shadow_scores",
        sa.Column("inspection_id", sa.String(36), sa.ForeignKey("inspections.id"), primary_key=True),
        sa.Column("version", sa.String(80), primary_key=True),
        sa.Column("anomaly_score", sa.Float, nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("inference_time_ms", sa.Float, nullable=False),
    )
    op.create_index("ix_shadow_scores_version", "shadow_scores", ["version"])
    op.create_table(
        "review_items",
        sa.Column("inspection_id", sa.String(36), sa.ForeignKey("inspections.id"), primary_key=True),
        sa.Column("reason", sa.String(8), nullable=False),
        sa.Column("labels_wanted", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("inspection_id", sa.String(36), sa.ForeignKey("inspections.id"), nullable=False, index=True),
        sa.Column("inspector", sa.String(64), nullable=False),
        sa.Column("label", sa.String(10), nullable=False),
        sa.Column("defect_type", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.UniqueConstraint("inspection_id", "inspector", name="uq_reviews_inspection_inspector"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False, index=True),
        sa.Column("version", sa.String(80)),
        sa.Column("detail", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    for table in ("events", "reviews", "review_items", "shadow_scores", "experiments"):
        op.drop_table(table)
    with op.batch_alter_table("inspections") as batch:
        batch.drop_column("latent")
        batch.drop_column("arm")
