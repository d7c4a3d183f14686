"""Active inspection: per product, send it to the advanced inspection or keep the basic prediction
(``/route``), and the final fault score once advanced results are in (``/route/final``). Served from the
model folder of ``fabguard active train`` (``router_dir``; data only: JSON, arrays, ONNX)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from fabguard.serve.app import Service
from fabguard.serve.dependencies import get_service, inspect_token
from fabguard.serve.schemas import Problem

router = APIRouter(prefix="/route", tags=["active inspection"], dependencies=[Depends(inspect_token)],
                   responses={401: {"model": Problem}, 404: {"model": Problem}, 422: {"model": Problem}})
Value = float | int | str | bool | None
MAX_PRODUCTS = 100_000


class Products(BaseModel):
    """One record per product: its basic inspection results (and advanced ones where measured), keyed by
    the column names the model was trained with."""

    records: list[dict[str, Value]] = Field(min_length=1, max_length=MAX_PRODUCTS)


class RouteRequest(Products):
    budget: float | None = Field(None, description="share of products to inspect (default: the model's)")
    money: float | None = Field(None, ge=0, description="advanced-inspection money per product instead of budget")
    mode: Literal["batch", "stream"] = "batch"
    rule: str | None = Field(None, description="routing rule (default: the model's)")


class Routed(BaseModel):
    decision: Literal["inspect", "accept"]
    fault_score: float | None
    routing_score: float | None
    final_score: float | None


class RouteResponse(BaseModel):
    products: list[Routed]


class FinalResponse(BaseModel):
    final_score: list[float | None]


async def get_router(service: Annotated[Service, Depends(get_service)]):
    if service.router is None:
        raise HTTPException(404, "no active-inspection model is configured (set router_dir / FABGUARD_ROUTER_DIR "
                                 "to a folder written by `fabguard active train`)")
    return service.router


def _number(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


@router.post("", response_model=RouteResponse)
async def route(request: RouteRequest, active: Annotated[object, Depends(get_router)]) -> RouteResponse:
    """Routing decision and scores per product, in input order."""
    import pandas as pd  # here: only services with an active-inspection model pay its import

    frame = pd.DataFrame.from_records(request.records)
    out = await run_in_threadpool(active.route, frame, request.budget, request.money, request.mode, request.rule)
    return RouteResponse(products=[Routed(decision=r["decision"], fault_score=_number(r["fault_score"]),
                                          routing_score=_number(r["routing_score"]),
                                          final_score=_number(r["final_score"])) for r in out.to_dict("records")])


@router.post("/final", response_model=FinalResponse)
async def final(request: Products, active: Annotated[object, Depends(get_router)]) -> FinalResponse:
    """Teacher probability where a product has its advanced results, else the basic probability."""
    import pandas as pd

    scores = await run_in_threadpool(active.final_score, pd.DataFrame.from_records(request.records))
    return FinalResponse(final_score=[_number(s) for s in scores])
