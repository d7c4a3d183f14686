"""Human review over HTTP: the inspectors' queue, their labels, the daily figures, and the review page.

Reading (queue, images, figures) follows ``token_on_inspect`` like the inspection history; posting a label
is a write and needs a token: the service token, or ``review_token``, which may post labels and nothing
else (so inspectors' browsers never hold the token that promotes models). The page itself is static and
asks for the inspector's name and token, kept in the browser tab's sessionStorage.
"""

from __future__ import annotations

import io
import secrets
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from fabguard.serve import images, review
from fabguard.serve.app import Service
from fabguard.serve.config import Settings
from fabguard.serve.dependencies import bearer, get_service, get_settings, inspect_token
from fabguard.serve.routers.anomaly import ID, heatmap_url
from fabguard.serve.schemas import (INSPECTOR, LabelIn, LabelRecord, Problem, ReviewFigures, ReviewItem,
                                    ReviewQueue)

STATIC = FilePath(__file__).resolve().parent.parent / "static"
PAGE_FILES = {"review.js": "text/javascript", "review.css": "text/css"}
# the page loads only from this service: scripts and styles from /review/, images as blob: URLs it fetched
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
PROBLEMS = {401: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem}, 422: {"model": Problem},
            503: {"model": Problem}}

router = APIRouter(tags=["review"], responses=PROBLEMS)


async def label_token(settings: Annotated[Settings, Depends(get_settings)],
                credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """Posting a label: the service token or ``review_token``."""
    if credentials is None:
        raise HTTPException(401, "a bearer token is required to post a label (the service token or the "
                                 "review token)", headers={"WWW-Authenticate": "Bearer"})
    given = credentials.credentials.encode()
    if not any(t and secrets.compare_digest(given, t.encode()) for t in (settings.token, settings.review_token)):
        raise HTTPException(401, "wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def _item(row: dict) -> ReviewItem:
    iid = row["inspection_id"]
    return ReviewItem(inspection_id=iid, reason=row["reason"], labels_wanted=row["labels_wanted"],
                      labels=row["labels"], queued_at=row["created_at"], wafer_id=row["wafer_id"],
                      inspection_point=row["inspection_point"], model_version=row["model_version"],
                      anomaly_score=row["anomaly_score"], decision=row["decision"], confidence=row["confidence"],
                      image_url=f"/api/v1/review/items/{iid}/image.png" if row["image_ref"] else None,
                      heatmap_url=heatmap_url(FilePath(row["heatmap_ref"]).stem))


@router.get("/api/v1/review/queue", response_model=ReviewQueue, dependencies=[Depends(inspect_token)])
async def queue(service: Annotated[Service, Depends(get_service)],
                inspector: Annotated[str, Query(pattern=INSPECTOR, description="skip items this inspector labelled")],
                limit: Annotated[int, Query(ge=1, le=200)] = 20) -> ReviewQueue:
    """The next items for ``inspector``: REVIEW decisions first, then audits, oldest first; items that have
    the labels they want, or a label by this inspector, are left out."""
    def read():
        with service.engine.connect() as c:
            return review.waiting(c), review.next_items(c, inspector, limit)
    left, rows = await run_in_threadpool(read)
    return ReviewQueue(waiting=left, defect_types=service.settings.review_defect_types, items=[_item(r) for r in rows])


@router.post("/api/v1/review/items/{inspection_id}/labels", response_model=LabelRecord, status_code=201,
             dependencies=[Depends(label_token)])
async def post_label(service: Annotated[Service, Depends(get_service)],
                     inspection_id: Annotated[str, Path(pattern=ID)], body: LabelIn) -> LabelRecord:
    """One inspector's label of a queued inspection. 404 unknown inspection; 409 not in the review queue,
    already labelled by this inspector, or already has the labels it wants; 422 a defect type that is not
    configured, or one given with 'normal'."""
    types = service.settings.review_defect_types
    if body.defect_type is not None and body.defect_type not in types:
        raise HTTPException(422, f"defect_type {body.defect_type!r}: one of {', '.join(types)}")

    def write():
        with service.engine.begin() as c:
            return review.record_label(c, inspection_id, body.inspector, body.label, body.defect_type)
    return LabelRecord(**await run_in_threadpool(write))


@router.get("/api/v1/review/items/{inspection_id}/image.png", response_class=Response,
            dependencies=[Depends(inspect_token)])
async def image(service: Annotated[Service, Depends(get_service)],
                inspection_id: Annotated[str, Path(pattern=ID)]) -> Response:
    """The stored image of a queued inspection as PNG (TIFF is converted: browsers do not show it)."""
    def read():
        with service.engine.connect() as c:
            ref = review.image_ref(c, inspection_id)
        path = service.settings.home / ref
        if not path.is_file():
            raise HTTPException(404, f"inspection {inspection_id}: image not stored (yet)")
        data = path.read_bytes()
        if data[:8] == images.PNG_MAGIC:
            return data
        from PIL import Image

        pixels = images.decode(data, service.settings.max_pixels)
        out = io.BytesIO()
        Image.fromarray(np.round(pixels.transpose(1, 2, 0) * 255).astype(np.uint8)).save(out, format="PNG")
        return out.getvalue()
    return Response(await run_in_threadpool(read), media_type="image/png")


@router.get("/api/v1/review/figures", response_model=ReviewFigures, dependencies=[Depends(inspect_token)])
async def figures(service: Annotated[Service, Depends(get_service)],
                  since: Annotated[datetime | None, Query(description="ISO 8601; default: 24 h before until")] = None,
                  until: Annotated[datetime | None, Query(description="ISO 8601; default: now")] = None,
                  version: Annotated[str | None, Query(max_length=80, description="a model's decisions, "
                                                       "its shadow decisions included (default: the logged "
                                                       "decisions of every version)")] = None,
                  arm: Annotated[str | None, Query(pattern="^(production|canary)$")] = None) -> ReviewFigures:
    """The case study's daily figures over inspections made in [since, until): miss rate from audited PASS
    images, false-alarm rate and REJECT override rate from audited REJECTs, with 95% intervals, and inspector
    agreement on double-labelled REVIEW images (docs/review.md)."""
    since, until = review.window(since, until)  # 422 naming the parameter, e.g. until=0001-01-01

    def read():
        with service.engine.connect() as c:
            return review.estimate(c, version, since, until, arm=arm).as_dict()
    return ReviewFigures(**await run_in_threadpool(read))


def _static(name: str, media_type: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type=media_type,
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


@router.get("/review", response_class=FileResponse, include_in_schema=False)
async def page() -> FileResponse:
    """The review page (plain HTML and a small script, nothing loaded from elsewhere)."""
    return _static("review.html", "text/html; charset=utf-8")


@router.get("/review/{name}", response_class=FileResponse, include_in_schema=False)
async def page_file(name: str) -> FileResponse:
    if name not in PAGE_FILES:
        raise HTTPException(404, f"no page file {name!r}")
    return _static(name, PAGE_FILES[name])
