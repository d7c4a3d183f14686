"""Yield jobs: production records in, low-yield machines out (the report JSON and its forest plot).

The records are read and checked while the request waits (a bad file is a 422 naming the row and
column); the detection itself runs on one background thread, one job at a time, so it never competes
with more than one core of inference. A job lives in the process that accepted it: if that process
stops, the job stays ``queued`` / ``running`` in the table (resubmit it)."""

from __future__ import annotations

import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from fabguard.params import MAX_SEED
from fabguard.serve import db
from fabguard.serve.app import Service
from fabguard.serve.dependencies import get_service, inspect_token
from fabguard.serve.schemas import Problem

router = APIRouter(prefix="/yield", tags=["yield"], dependencies=[Depends(inspect_token)],
                   responses={401: {"model": Problem}, 404: {"model": Problem}, 422: {"model": Problem}})
ID = r"^[0-9a-f]{32}$"
TABLE_TYPES = {"text/csv": ".csv", "application/vnd.apache.parquet": ".parquet"}
TABLE_BODY = {"requestBody": {"required": True, "content": {
    "text/csv": {"schema": {"type": "string"}},
    "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


class YieldJob(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed"]
    created_at: datetime
    finished_at: datetime | None
    rows: int
    report: dict | None
    error: str | None
    plot_url: str | None


@router.post("/jobs", response_model=YieldJob, status_code=202, openapi_extra=TABLE_BODY,
             responses={413: {"model": Problem}, 415: {"model": Problem}})
async def submit(request: Request, service: Annotated[Service, Depends(get_service)],
                 seed: Annotated[int, Query(ge=0, le=MAX_SEED)] = 0,
                 resamples: Annotated[int, Query(ge=2, le=1000)] = 30) -> YieldJob:
    """Production records as CSV or Parquet (the formats of ``fabguard yield detect``) -> a job id; poll
    ``GET /yield/jobs/{id}`` for the report."""
    kind = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    body = await request.body()
    suffix = ".parquet" if body[:4] == b"PAR1" else TABLE_TYPES.get(kind, ".csv")
    if kind not in (*TABLE_TYPES, "application/octet-stream"):
        raise HTTPException(415, f"content type {kind!r}: send CSV (text/csv) or Parquet "
                                 "(application/vnd.apache.parquet)")
    data = await run_in_threadpool(_read, service, body, suffix)
    job_id = uuid.uuid4().hex
    row = {"id": job_id, "created_at": datetime.now(timezone.utc), "status": "queued", "rows": data.n_rows}
    await run_in_threadpool(_write, service, sa.insert(db.yield_jobs).values(**row))
    service.yield_executor.submit(_detect, service, job_id, data, seed, resamples)
    return await job(service, job_id)


def _read(service: Service, body: bytes, suffix: str):
    from fabguard.machine_yield.data import load_production

    with tempfile.TemporaryDirectory(dir=service.settings.home) as folder:
        path = Path(folder) / f"records{suffix}"
        path.write_bytes(body)
        return load_production(path)


def _write(service: Service, statement) -> None:
    with service.engine.begin() as connection:
        connection.execute(statement)


def _detect(service: Service, job_id: str, data, seed: int, resamples: int) -> None:
    """The detection, on the yield thread; its outcome (report or error) is written to the job's row."""
    from fabguard.machine_yield.detector import LowYieldDetector

    jobs = db.yield_jobs
    _write(service, sa.update(jobs).where(jobs.c.id == job_id).values(status="running"))
    try:
        report = LowYieldDetector(resamples=resamples, seed=seed, threads=1).fit(data).report_
        report.plot(service.settings.home / "yield" / f"{job_id}.png")
        values = {"status": "done", "report": report.to_dict()}
    except Exception as exc:  # noqa: BLE001 - any failure is the job's answer, not the server's
        values = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    _write(service, sa.update(jobs).where(jobs.c.id == job_id).values(finished_at=datetime.now(timezone.utc),
                                                                       **values))


@router.get("/jobs/{job_id}", response_model=YieldJob)
async def job(service: Annotated[Service, Depends(get_service)],
              job_id: Annotated[str, PathParam(pattern=ID)]) -> YieldJob:
    """The job's status, and when done its report (the JSON of ``fabguard yield detect``) and plot URL."""
    def fetch():
        with service.engine.connect() as c:
            return c.execute(sa.select(db.yield_jobs).where(db.yield_jobs.c.id == job_id)).mappings().first()
    row = await run_in_threadpool(fetch)
    if row is None:
        raise HTTPException(404, f"no yield job {job_id}")
    return YieldJob(job_id=row["id"], plot_url=f"/api/v1/yield/jobs/{job_id}/plot.png" if row["status"] == "done"
                    else None, **{k: row[k] for k in ("status", "created_at", "finished_at", "rows", "report",
                                                     "error")})


@router.get("/jobs/{job_id}/plot.png", response_class=FileResponse)
async def plot(service: Annotated[Service, Depends(get_service)], job_id: Annotated[str, PathParam(pattern=ID)]):
    """The forest plot of the job's machines (404 until the job is done)."""
    path = service.settings.home / "yield" / f"{job_id}.png"
    if not path.is_file():
        raise HTTPException(404, f"no plot for yield job {job_id} (unknown, or not done yet)")
    return FileResponse(path, media_type="image/png")
