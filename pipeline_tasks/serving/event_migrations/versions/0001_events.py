"""The event store's first schema: exposures and feedback, as the JSON-lines logs had them.

Revision ID: 0001_events
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_events"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exposures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.String(40), nullable=False),
        sa.Column("exposure_id", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("variant", sa.String(32), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("k", sa.Integer, nullable=False),
        sa.Column("items", sa.JSON, nullable=False),
        sa.Column("cold_start", sa.Boolean, nullable=False),
        sa.Column("fallback", sa.Boolean, nullable=False),
        sa.Column("experiment_id", sa.Text, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
    )
    op.create_index("ix_exposures_user_id_id", "exposures", ["user_id", "id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.String(40), nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("item_id", sa.Text, nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("exposure_id", sa.String(64), nullable=True),
        sa.Column("variant", sa.String(32), nullable=True),
        sa.Column("experiment_id", sa.Text, nullable=True),
    )
    op.create_index("ix_feedback_exposure_id", "feedback", ["exposure_id"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("exposures")
