"""Image retention: stored images and heatmaps older than ``retain_images_days`` are deleted.

Kept whatever their age: the image and heatmap of every inspection in the review queue, labelled or still
waiting. A waiting one is on an inspector's screen; a labelled one is what retraining trains and evaluates
on (``fabguard anomaly retrain``), the evidence behind the miss-rate estimate, and a small share of the line
(every REVIEW, ``audit_pass_rate`` of PASS, ``audit_reject_rate`` of REJECT). An inspection's place in the
queue is decided in the transaction that logs it, so whether its files are kept never changes later.

The log rows stay as they are (``image_ref`` and ``heatmap_ref`` name files that no longer exist, as the
log records what was inspected): the endpoints answer 404 for a deleted file, and each run that deleted
something appends a ``retention`` event (cutoff and counts). Images live in each replica's own home folder,
so each home keeps its own progress in ``home/retention.json``: the inspections before that time are done,
and a run reads only those that expired since (``full`` reads every expired inspection again).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from fabguard.errors import InputError
from fabguard.outputs import atomic_path
from fabguard.serve import db
from fabguard.serve.config import Settings

log = logging.getLogger("fabguard.serve")
PROGRESS = "retention.json"
REF = re.compile(r"^(images|heatmaps)/[^/\\]+$")  # what the service writes; anything else is never deleted


def open_log(settings: Settings) -> sa.Engine:
    """The engine of an existing home's log for a command run beside the service (migrated, as the service
    does at start); refused with what is missing when the home folder or the database is not there."""
    home = settings.home
    if not home.is_dir():
        raise InputError(f"home folder {home} does not exist (the service's state folder: --home, or "
                         "$FABGUARD_HOME)")
    if not (home / "images").is_dir():
        raise InputError(f"{home} has no images/ folder: not the state folder of a service that has run")
    if settings.db is None and not (home / "fabguard.db").is_file():
        raise InputError(f"no inspection log in {home} (no fabguard.db): run the service on it first, or give "
                         "its database with --db")
    shown = sa.engine.make_url(settings.db_url).render_as_string(hide_password=True)
    engine = db.create_engine(settings.db_url)
    try:
        logged = sa.inspect(engine).has_table("inspections")
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise InputError(f"cannot open the database {shown}: {str(exc.orig).strip().splitlines()[0]}") from None
    if not logged:
        engine.dispose()
        raise InputError(f"database {shown} has no inspection log: run the service on it first")
    db.migrate(engine)
    return engine


def _done_before(settings: Settings) -> datetime | None:
    path = settings.home / PROGRESS
    if not path.is_file():
        return None
    try:
        done = datetime.fromisoformat(json.loads(path.read_text())["done_before"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s unreadable (%s): reading every expired inspection again", path, exc)
        return None
    return done if done.tzinfo else done.replace(tzinfo=timezone.utc)


def prune(engine: sa.Engine, settings: Settings, now: datetime | None = None, full: bool = False) -> dict:
    """Delete the expired files of this home (module docstring); returns the cutoff and what was deleted.
    A file that cannot be deleted is logged and counted, never fatal."""
    if settings.retain_images_days is None:
        return {"cutoff": None, "images": 0, "heatmaps": 0, "bytes": 0, "failed": 0}
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=settings.retain_images_days)
    start = None if full else _done_before(settings)
    found = {"cutoff": cutoff.isoformat(), "images": 0, "heatmaps": 0, "bytes": 0, "failed": 0}
    if start is not None and start >= cutoff:
        return found
    i, q = db.inspections, db.review_items
    query = sa.select(i.c.image_ref, i.c.heatmap_ref).where(
        i.c.created_at < cutoff, ~sa.exists().where(q.c.inspection_id == i.c.id))
    if start is not None:
        query = query.where(i.c.created_at >= start)
    with engine.connect() as connection:
        for row in connection.execution_options(yield_per=1000).execute(query):
            for ref, kind in ((row.image_ref, "images"), (row.heatmap_ref, "heatmaps")):
                if ref is None or not REF.match(ref):
                    continue
                path = settings.home / ref
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    found["failed"] += 1
                    log.warning("retention: cannot delete %s: %s", path, exc)
                    continue
                found[kind] += 1
                found["bytes"] += size
    if not found["failed"]:  # else the next run tries those files again
        try:
            with atomic_path(settings.home / PROGRESS) as tmp:
                tmp.write_text(json.dumps({"done_before": cutoff.isoformat()}) + "\n")
        except OSError as exc:  # the next run reads these inspections again: slower, still right
            log.warning("retention: cannot write %s: %s", settings.home / PROGRESS, exc)
    if found["images"] or found["heatmaps"] or found["failed"]:
        from fabguard.serve.experiments import event

        with engine.begin() as connection:
            event(connection, "retention", None, home=str(settings.home), **found)
        log.info("retention: deleted %d images and %d heatmaps inspected before %s", found["images"],
                 found["heatmaps"], found["cutoff"])
    return found
