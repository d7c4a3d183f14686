"""Shadow and canary experiments over HTTP: start, stop, the comparison report; the event log (writes need
the bearer token)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query
from starlette.concurrency import run_in_threadpool

from fabguard.serve import db
from fabguard.serve.app import Service
from fabguard.serve.dependencies import get_service, require_token
from fabguard.serve.schemas import Comparison, EventRecord, ExperimentRecord, ExperimentStart, Problem

router = APIRouter(tags=["experiments"], responses={401: {"model": Problem}, 404: {"model": Problem},
                                                    409: {"model": Problem}, 422: {"model": Problem}})
ID = Path(ge=1, le=2**31 - 1)


@router.get("/experiments", response_model=list[ExperimentRecord])
async def list_experiments(service: Annotated[Service, Depends(get_service)],
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[ExperimentRecord]:
    """Experiments, newest first."""
    return [ExperimentRecord(**e) for e in await run_in_threadpool(service.experiments.list, limit)]


@router.post("/experiments", response_model=ExperimentRecord, status_code=201, dependencies=[Depends(require_token)])
async def start(service: Annotated[Service, Depends(get_service)], body: ExperimentStart) -> ExperimentRecord:
    """Start a shadow or canary phase of a registered candidate beside the serving version (one at a time)."""
    return ExperimentRecord(**await run_in_threadpool(service.experiments.start, body.candidate, body.mode,
                                                      body.share))


@router.get("/experiments/{experiment_id}", response_model=ExperimentRecord)
async def get(service: Annotated[Service, Depends(get_service)],
              experiment_id: Annotated[int, ID]) -> ExperimentRecord:
    return ExperimentRecord(**await run_in_threadpool(service.experiments.get, experiment_id))


@router.post("/experiments/{experiment_id}/stop", response_model=ExperimentRecord,
             dependencies=[Depends(require_token)])
async def stop(service: Annotated[Service, Depends(get_service)],
               experiment_id: Annotated[int, ID]) -> ExperimentRecord:
    """End a running experiment: every image is decided by production again."""
    return ExperimentRecord(**await run_in_threadpool(service.experiments.stop, experiment_id, "ended", "stopped"))


@router.get("/experiments/{experiment_id}/report", response_model=Comparison)
async def report(service: Annotated[Service, Depends(get_service)],
                 experiment_id: Annotated[int, ID]) -> Comparison:
    """Candidate against production: REJECT / REVIEW rates with a two-sided two-proportion test (p < 0.01),
    decision agreement and score KS test (shadow), latency, rates against reviewed labels, and whether
    promotion is recommended (and if not, why)."""
    return Comparison(**await run_in_threadpool(service.experiments.report, experiment_id))


@router.get("/events", response_model=list[EventRecord])
async def events(service: Annotated[Service, Depends(get_service)],
                 kind: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$")] = None,
                 since: datetime | None = None,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[EventRecord]:
    """The event log, newest first: experiments started and ended, guardrail rollbacks, alerts."""
    query = sa.select(db.events).order_by(db.events.c.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(db.events.c.kind == kind)
    if since is not None:
        query = query.where(db.events.c.at >= db.utc(since, "since"))

    def fetch():
        with service.engine.connect() as c:
            return [EventRecord(**r) for r in c.execute(query).mappings()]

    return await run_in_threadpool(fetch)

