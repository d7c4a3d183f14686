"""Liveness and readiness, for the load balancer and the orchestrator."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from fabguard.serve.app import Service
from fabguard.serve.dependencies import get_service
from fabguard.serve.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process answers."""
    return Health(status="alive")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(service: Annotated[Service, Depends(get_service)]):
    """200 once a model is loaded and warmed (one inference ran at load), 503 before."""
    serving = service.registry.serving
    body = Health(status="ready" if serving else "loading", model_version=serving and serving.version,
                  loaded=service.registry.loaded_versions())
    return body if serving else JSONResponse(body.model_dump(), status_code=503)
