"""The inspection log and the model registry as SQLAlchemy Core tables (schema owned by Alembic).

SQLite (the default) runs in WAL mode with ``synchronous=NORMAL``: a committed inspection survives a
killed process (kill -9), and readers never block the writer. The service moves the WAL into the database
file on a thread of its own (:func:`checkpoint`), not inside an inspection's commit. PostgreSQL
(``postgresql://...``) lets several replicas share one log and one registry.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from fabguard.errors import InputError


def utc(t: datetime, name: str = "time") -> datetime:
    """``t`` in UTC, a time without an offset taken as UTC (the log's times are UTC). InputError naming
    ``name`` where UTC takes it off the calendar (e.g. 0001-01-01T00:00+14:00, 9999-12-31T23:59-12:00)."""
    try:
        return t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)
    except OverflowError:
        raise InputError(f"{name} {t.isoformat()}: outside years 1-9999 in UTC") from None


class UTCDateTime(sa.TypeDecorator):
    """A time in the log, always as its UTC instant, on every database: stored converted to UTC (SQLite keeps
    no offset and would store the wall time, so ``since=...+02:00`` compared two hours off; a time without an
    offset is taken as UTC, not as PostgreSQL's session time zone), read back in UTC (SQLite's times carry no
    offset, psycopg gives the session's)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else utc(value)

    def process_result_value(self, value, dialect):
        return None if value is None else utc(value)


metadata = sa.MetaData()

models = sa.Table(
    "models", metadata,
    sa.Column("version", sa.String(80), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("report", sa.JSON, nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("registered_at", UTCDateTime(), nullable=False),
)

artifacts = sa.Table(  # the ONNX bytes themselves, so replicas on other hosts load exactly what was registered
    "artifacts", metadata,
    sa.Column("version", sa.String(80), sa.ForeignKey("models.version"), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

promotions = sa.Table(  # append-only: the serving version is the newest row; rollback appends the one before
    "promotions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.String(80), sa.ForeignKey("models.version"), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
)

inspections = sa.Table(
    "inspections", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("wafer_id", sa.String(64), nullable=False, index=True),
    sa.Column("inspection_point", sa.Integer, nullable=False),
    sa.Column("model_version", sa.String(80), nullable=False),
    sa.Column("anomaly_score", sa.Float, nullable=False),
    sa.Column("decision", sa.String(8), nullable=False, index=True),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("inference_time_ms", sa.Float, nullable=False),
    sa.Column("image_ref", sa.String(256)),
    sa.Column("heatmap_ref", sa.String(256), nullable=False),
    sa.Column("arm", sa.String(10), nullable=False, server_default="production"),  # production or canary
    sa.Column("latent", sa.LargeBinary),  # 128 float32, little-endian: the latent drift monitor reads it
)

experiments = sa.Table(  # a candidate's shadow or canary phase beside the production (baseline) version
    "experiments", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("candidate", sa.String(80), sa.ForeignKey("models.version"), nullable=False),
    sa.Column("baseline", sa.String(80), sa.ForeignKey("models.version"), nullable=False),
    sa.Column("mode", sa.String(8), nullable=False),  # shadow or canary
    sa.Column("share", sa.Float, nullable=False),  # share of wafers the canary decides (0 for shadow)
    sa.Column("status", sa.String(12), nullable=False),  # running, ended, promoted, rolled_back
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime()),
    sa.Column("note", sa.Text),
)

shadow_scores = sa.Table(  # what the candidate said about an image that production (or the canary) decided
    "shadow_scores", metadata,
    sa.Column("inspection_id", sa.String(36), sa.ForeignKey("inspections.id"), primary_key=True),
    sa.Column("version", sa.String(80), primary_key=True, index=True),
    sa.Column("anomaly_score", sa.Float, nullable=False),
    sa.Column("decision", sa.String(8), nullable=False),
    sa.Column("inference_time_ms", sa.Float, nullable=False),
)

review_items = sa.Table(  # the review queue: REVIEW decisions and the audit sample of PASS and REJECT
    "review_items", metadata,
    sa.Column("inspection_id", sa.String(36), sa.ForeignKey("inspections.id"), primary_key=True),
    sa.Column("reason", sa.String(8), nullable=False),  # review or audit
    sa.Column("labels_wanted", sa.Integer, nullable=False),  # 2 where inspector agreement is measured
    sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
)

reviews = sa.Table(  # one inspector's label of one inspection
    "reviews", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("inspection_id", sa.String(36), sa.ForeignKey("inspections.id"), nullable=False, index=True),
    sa.Column("inspector", sa.String(64), nullable=False),
    sa.Column("label", sa.String(10), nullable=False),  # normal or defective
    sa.Column("defect_type", sa.String(64)),
    sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
    sa.UniqueConstraint("inspection_id", "inspector", name="uq_reviews_inspection_inspector"),
)

events = sa.Table(  # what the on-call engineer reads back: alerts, guardrail rollbacks, experiment changes
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False, index=True),
    sa.Column("version", sa.String(80)),
    sa.Column("detail", sa.JSON, nullable=False),
)

yield_jobs = sa.Table(
    "yield_jobs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("status", sa.String(8), nullable=False),  # queued, running, done, failed
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("report", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("finished_at", UTCDateTime()),
)

MIGRATIONS = Path(__file__).with_name("migrations")


def create_engine(url: str, autocheckpoint: bool = True) -> sa.Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys on every connection, and
    without ``autocheckpoint`` its commits checkpoint only past ``FALLBACK_CHECKPOINT_PAGES`` (the caller
    runs :func:`checkpoint`; the fallback bounds the WAL should that stop)."""
    if not url.startswith("sqlite"):
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                                connect_args={"connect_timeout": 3} if "psycopg" in url else {})
    engine = sa.create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(connection, _record):
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not autocheckpoint:
            cursor.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_CHECKPOINT_PAGES}")
        cursor.close()

    return engine


CHECKPOINT_SECONDS = 1.0
FALLBACK_CHECKPOINT_PAGES = 10_000  # SQLite's default is 1000


def checkpoint(engine: sa.Engine) -> None:
    """Copy the pages committed to SQLite's WAL into the database file, without waiting for any reader or
    writer (PASSIVE). The service runs this every ``CHECKPOINT_SECONDS`` on a background thread: left to
    SQLite, the commit that takes the WAL past 1000 pages does it, about one inspection in 200, and in a
    per-stage trace of 1000 PatchCore requests those answers waited 7-13 ms longer. SQLite engines only
    (the service schedules it for them)."""
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent; safe on every start)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # replicas starting together migrate one at a time
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(7243920001)"))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
