"""Prometheus text of this process's metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fabguard.serve.app import Service
from fabguard.serve.dependencies import get_service

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", response_class=Response)
async def metrics(service: Annotated[Service, Depends(get_service)]) -> Response:
    serving = service.registry.serving
    service.metrics.models(service.registry.loaded_versions(), serving and serving.version)
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
