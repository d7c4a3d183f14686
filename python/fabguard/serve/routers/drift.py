"""Drift of the serving model's PASS images against its reference: ``GET /api/v1/drift``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from fabguard.serve.app import Service
from fabguard.serve.dependencies import get_service
from fabguard.serve.engine import NotReady
from fabguard.serve.registry import VERSION
from fabguard.serve.schemas import DriftReport, Problem

router = APIRouter(tags=["monitoring"], responses={404: {"model": Problem}, 422: {"model": Problem},
                                                   503: {"model": Problem}})


@router.get("/drift", response_model=DriftReport)
async def drift(service: Annotated[Service, Depends(get_service)],
                version: Annotated[str | None, Query(pattern=VERSION.pattern,
                                                     description="default: the serving version")] = None):
    """KS test of the newest PASS scores against the validation scores <= REVIEW, the mean PASS score (per
    hour too), and the latent mean / variance shift. Computed now, on a worker thread (the gauges are
    refreshed every ``monitor_seconds`` by the service itself)."""
    report = await run_in_threadpool(service.monitor.report, version)
    if report is None:
        raise NotReady("no model is serving yet")
    return report
