"""The service's own status page, for sites without Grafana: ``GET /status`` (HTML + a script that draws the
case study's dashboard panels as inline SVG; nothing is fetched from elsewhere) and the JSON it plots,
``GET /api/v1/status``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated

import numpy as np
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from fabguard.anomaly.thresholds import DECISIONS
from fabguard.serve import db
from fabguard.serve.app import Service
from fabguard.serve.dependencies import get_service
from fabguard.serve.drift import as_hour, hour_bucket, pass_score_history
from fabguard.serve.schemas import StatusReport

router = APIRouter(tags=["monitoring"])
STATIC = Path(__file__).parent.parent / "static"
FILES = {"status.js": "text/javascript", "status.css": "text/css"}
# the page runs only its own script and style: no CDN, no inline code
POLICY = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                     "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}
# the alert rules' limits (alerts.yml), drawn on the plots; a test checks both say the same
LIMITS = {"reject_rate": 0.05, "latency_p99_ms": 40.0}
HISTOGRAM_BINS, HISTOGRAM_MAX_ROWS = 30, 20_000


@router.get("/status", include_in_schema=False)
async def page():
    return FileResponse(STATIC / "status.html", media_type="text/html", headers=POLICY)


@router.get("/status/{name}", include_in_schema=False)
async def asset(name: str):
    if name not in FILES:
        raise HTTPException(404, f"no status page file {name!r}")
    return FileResponse(STATIC / name, media_type=FILES[name], headers=POLICY)


@router.get("/api/v1/status", response_model=StatusReport)
async def status(service: Annotated[Service, Depends(get_service)]):
    """Inspections per hour by decision (all replicas: from the log), the serving version's score histogram
    over the last hour, this replica's timeline (latency quantiles, queue depth, drift p-values) and the
    latest drift report."""
    return await run_in_threadpool(summary, service)


def summary(service: Service) -> dict:
    serving = service.registry.serving
    settings = service.settings
    thresholds = serving and serving.inspector.thresholds
    report = service.monitor.last_report
    with service.engine.connect() as c:
        hours = decisions_per_hour(c, settings.status_hours)
        if serving is not None:
            for row in pass_score_history(c, serving.version, settings.status_hours):
                hours.setdefault(row["hour"], _empty_hour(row["hour"]))["pass_mean_score"] = row["mean_score"]
        histogram = score_histogram(c, serving and serving.version, thresholds)
    drift = None if report is None else {
        "model_version": report["model_version"], "computed_at": report["computed_at"], "alpha": report["alpha"],
        "alarm": report["alarm"], "reference": report["reference"]["source"], "window": report["window"]["n"],
        "score_pvalue": report["score"]["pvalue"], "latent_pvalue": report["latent"]["pvalue"],
        "pass_score_mean": report["score"]["window_mean"], "reference_score_mean": report["score"]["reference_mean"]}
    return {"generated_at": datetime.now(timezone.utc), "model_version": serving and serving.version,
            "thresholds": thresholds and {"review": thresholds.review, "reject": thresholds.reject},
            "limits": {**LIMITS, "drift_alpha": settings.drift_alpha},
            "hours": [hours[h] for h in sorted(hours)], "score_histogram": histogram,
            "timeline": service.monitor.points(), "drift": drift}


def _empty_hour(hour: datetime) -> dict:
    return {"hour": hour, **{d: 0 for d in DECISIONS}, "total": 0, "reject_rate": None, "pass_mean_score": None}


def decisions_per_hour(connection, hours: int) -> dict:
    """hour -> inspections by decision, total and REJECT rate (every version), over the last ``hours``."""
    t = db.inspections
    hour = hour_bucket(connection, t.c.created_at).label("hour")
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    rows = connection.execute(sa.select(hour, t.c.decision, sa.func.count()).where(t.c.created_at >= since)
                              .group_by(hour, t.c.decision)).all()
    out: dict = {}
    for h, decision, n in rows:
        row = out.setdefault(as_hour(h), _empty_hour(as_hour(h)))
        row[decision] = int(n)
        row["total"] += int(n)
    for row in out.values():
        row["reject_rate"] = row["REJECT"] / row["total"]
    return out


def score_histogram(connection, version: str | None, thresholds) -> dict:
    """Counts of the serving version's scores of the last hour (newest ``HISTOGRAM_MAX_ROWS``) in equal bins
    from 0 to twice the REJECT threshold (or the largest score, if smaller); scores above the range are
    counted in ``above``."""
    since = datetime.now(timezone.utc) - timedelta(hours=1)
    if version is None:
        return {"edges": [], "counts": [], "above": 0, "n": 0, "since": since}
    t = db.inspections
    scores = np.array(connection.execute(
        sa.select(t.c.anomaly_score).where(t.c.model_version == version, t.c.created_at >= since)
        .order_by(t.c.created_at.desc()).limit(HISTOGRAM_MAX_ROWS)).scalars().all(), np.float64)
    upper = 2 * thresholds.reject if thresholds.reject > 0 else float(scores.max(initial=1.0))
    counts, edges = np.histogram(np.clip(scores, 0, upper), bins=HISTOGRAM_BINS, range=(0, upper))
    above = int((scores > upper).sum())
    counts[-1] -= above  # np.clip put them in the last bin
    return {"edges": edges.tolist(), "counts": counts.tolist(), "above": above, "n": len(scores), "since": since,
            "capped": len(scores) == HISTOGRAM_MAX_ROWS}
