"""Inspection: score an image, log it, answer; heatmaps; the inspection history an MES looks up."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Annotated

import numpy as np
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from fabguard.outputs import atomic_path
from fabguard.serve import db, images
from fabguard.serve.app import Service
from fabguard.serve.dependencies import get_service, image_body, inspect_token
from fabguard.serve.engine import Result, score_batch
from fabguard.serve.schemas import MAX_POINT, WAFER_ID, Decision, InspectionRecord, InspectionResult, Problem

log = logging.getLogger("fabguard.serve")
router = APIRouter(tags=["inspection"], dependencies=[Depends(inspect_token)],
                   responses={401: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}})
HEATMAP_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,120}$"
PLANES = ".npy"  # what an inspection keeps of its heatmap (:func:`images.heatmap_planes`); the PNG is drawn on GET
ID = r"^[0-9a-f]{32}$"
# how long after its answer an inspection's after-answer work waits for a model call to run beside (a
# service with no traffic: the heatmap data is written this long after the answer)
AFTER_WAIT_S = 0.05
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in ("application/octet-stream", "image/png",
                                                                    "image/tiff")}}}


def heatmap_url(name: str) -> str:
    return f"/api/v1/heatmaps/{name}.png"


@router.post("/inspect", response_model=InspectionResult, openapi_extra=IMAGE_BODY,
             responses={413: {"model": Problem}, 415: {"model": Problem}})
async def inspect(service: Annotated[Service, Depends(get_service)],
                  body: Annotated[bytes, Depends(image_body)],
                  wafer_id: Annotated[str, Query(pattern=WAFER_ID, description="letters, digits, '-', '_'")],
                  inspection_point: Annotated[int, Query(ge=0, le=MAX_POINT)]) -> InspectionResult:
    """Score one raw PNG or TIFF image; the inspection is committed to the log before this answer is sent.
    The heatmap's data is written after the answer (``heatmap_url`` draws it once written), and a shadow
    candidate scores the image then."""
    inspection_id = uuid.uuid4().hex
    name = f"{wafer_id}-{inspection_point}-{inspection_id[:12]}"
    suffix = ".tif" if body[:4] in images.TIFF_MAGIC else ".png"
    image_ref = f"images/{inspection_id}{suffix}" if service.settings.store_images else None
    own = {"id": inspection_id, "wafer_id": wafer_id, "inspection_point": inspection_point, "image_ref": image_ref,
           "heatmap_ref": f"heatmaps/{name}{PLANES}"}
    result, row, pixels = await service.batcher.score(partial(images.decode, body, service.settings.max_pixels), own)
    service.metrics.inspections.labels(result.decision, result.version).inc()
    service.metrics.score.labels(result.version).observe(result.score)
    running = service.experiments.running
    shadow = running.candidate if running is not None and running.mode == "shadow" else None
    # after the answer, on its own thread: not a background task, which would hold this keep-alive connection
    service.after.submit(_after, service, row, body if image_ref else None, result, shadow, pixels,
                         time.monotonic() + AFTER_WAIT_S)
    return InspectionResult(wafer_id=wafer_id, inspection_point=inspection_point, anomaly_score=result.score,
                            decision=result.decision, confidence=result.confidence, heatmap_url=heatmap_url(name),
                            latent_vector=result.latent.tolist(), model_version=result.version,
                            inference_time_ms=result.inference_ms, inspection_id=inspection_id)


def _after(service: Service, row: dict, body: bytes | None, result: Result, shadow, pixels,
           deadline: float) -> None:
    """After the answer: what the heatmap overlay is drawn from and the image itself, each written whole;
    the shadow candidate's score of the same image. A failure is logged, never lost silently.

    It starts when a batch enters its ONNX Runtime call, or at ``deadline`` (``AFTER_WAIT_S`` after the
    answer): this work holds the GIL, which the model call does not, whereas the next request's parsing and
    decoding need it. Run at once, it lengthened that request by about a millisecond at the median
    (PatchCore, concurrency 1, two servers measured in alternating blocks). The deadline counts from the
    answer, not from when this thread gets to the work, so a backlog never waits again: the thread keeps
    up with any rate its work allows, however short the model calls. A shadow candidate's model call then
    runs beside production's, sharing the cores."""
    service.batcher.in_model.wait(max(0.0, deadline - time.monotonic()))
    home = service.settings.home
    try:
        with atomic_path(home / row["heatmap_ref"]) as tmp, open(tmp, "wb") as file:
            np.save(file, images.heatmap_planes(result.pixels, result.heatmap), allow_pickle=False)
        if body is not None:
            with atomic_path(home / row["image_ref"]) as tmp:
                tmp.write_bytes(body)
        if shadow is not None:
            [scored] = score_batch(shadow, [pixels])
            service.metrics.shadow.observe(scored.inference_ms / 1e3)
            with service.engine.begin() as connection:
                connection.execute(db.shadow_scores.insert().values(
                    inspection_id=row["id"], version=scored.version, anomaly_score=scored.score,
                    decision=scored.decision, inference_time_ms=scored.inference_ms))
    except Exception:  # noqa: BLE001  (a full disk or a database outage must not kill the worker thread)
        log.exception("inspection %s: after-answer work failed", row["id"])


@router.get("/heatmaps/{name}.png", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "the heatmap overlay"}, 404: {"model": Problem}})
async def heatmap(service: Annotated[Service, Depends(get_service)],
                  name: Annotated[str, PathParam(pattern=HEATMAP_NAME)]):
    """The heatmap over the inspected image, drawn now from the data the inspection kept (or the PNG itself,
    which earlier builds of the service kept); 404 until that data is written: when the next model call
    starts, or ``AFTER_WAIT_S`` after the answer (later only behind a backlog of such work)."""
    folder = service.settings.home / "heatmaps"
    if (folder / f"{name}.png").is_file():
        return FileResponse(folder / f"{name}.png", media_type="image/png")
    png = await run_in_threadpool(_draw, folder / f"{name}{PLANES}")
    if png is None:
        raise HTTPException(404, f"no heatmap {name}.png (unknown, or not written yet)")
    return Response(png, media_type="image/png")


def _draw(path: Path) -> bytes | None:
    """The overlay PNG from an inspection's heatmap planes; None when there are none (or they are damaged:
    a file under the home folder that is not what the service wrote is treated as missing)."""
    try:
        planes = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if planes.dtype != np.uint8 or planes.ndim != 3 or len(planes) != 2:
        return None
    return images.overlay_png(planes)


def _record(row) -> InspectionRecord:
    name = Path(row["heatmap_ref"]).stem
    return InspectionRecord(inspection_id=row["id"], heatmap_url=heatmap_url(name),
                            **{k: row[k] for k in ("created_at", "wafer_id", "inspection_point", "model_version",
                                                   "anomaly_score", "decision", "confidence",
                                                   "inference_time_ms", "image_ref")})


@router.get("/inspections", response_model=list[InspectionRecord])
async def inspections(service: Annotated[Service, Depends(get_service)],
                      wafer_id: Annotated[str | None, Query(pattern=WAFER_ID)] = None,
                      decision: Decision | None = None, since: datetime | None = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[InspectionRecord]:
    """The newest inspections first, filtered by wafer, decision and time (``since``: ISO 8601)."""
    table = db.inspections
    query = sa.select(table).order_by(table.c.created_at.desc()).limit(limit)
    if wafer_id is not None:
        query = query.where(table.c.wafer_id == wafer_id)
    if decision is not None:
        query = query.where(table.c.decision == decision)
    if since is not None:
        query = query.where(table.c.created_at >= db.utc(since, "since"))
    rows = await run_in_threadpool(_fetch, service, query)
    return [_record(r) for r in rows]


@router.get("/inspections/{inspection_id}", response_model=InspectionRecord, responses={404: {"model": Problem}})
async def inspection(service: Annotated[Service, Depends(get_service)],
                     inspection_id: Annotated[str, PathParam(pattern=ID)]) -> InspectionRecord:
    rows = await run_in_threadpool(_fetch, service, sa.select(db.inspections).where(db.inspections.c.id == inspection_id))
    if not rows:
        raise HTTPException(404, f"no inspection {inspection_id}")
    return _record(rows[0])


def _fetch(service: Service, query) -> list:
    with service.engine.connect() as connection:
        return connection.execute(query).mappings().all()
