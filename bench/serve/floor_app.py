"""The HTTP floor of the latency bench: what a request costs on this machine before the service does any
work of its own. ``python bench/serve/floor_app.py PORT`` serves ``POST /api/v1/inspect`` on the stack
``fabguard serve`` runs (FastAPI, uvicorn with uvloop and httptools, the same switch interval): it reads the
image body, crosses to a worker thread and back once (as an inspection does), and answers a fixed
:class:`~fabguard.serve.schemas.InspectionResult` of the same size; no decode, model, scoring or log.

``python bench/serve/floor_app.py PORT CALL_MS``: the worker thread also makes a native call of ``CALL_MS``
that releases the GIL, as an ONNX Runtime call does, and the answer's ``inference_time_ms`` is its measured
length. A long call changes the floor: the event loop's thread waits that long before it is woken again,
and on a virtual machine a core that has waited that long may be slow to resume.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from typing import Annotated

import uvicorn
from fabguard.serve.schemas import InspectionResult
from fastapi import FastAPI, Query, Request

ANSWER = InspectionResult(wafer_id="WF-1", inspection_point=1, anomaly_score=0.5, decision="PASS", confidence=0.9,
                          heatmap_url="/api/v1/heatmaps/WF-1-1-000000000000.png", latent_vector=[0.123456789] * 128,
                          model_version="floor-v0.0.0", inference_time_ms=0.0, inspection_id="0" * 32)
app = FastAPI()
CALL_MS = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
BLOCK = bytes(1 << 16)


def call(body: bytes) -> float:
    """Stands in for the model: hashes 64 KiB blocks (each releases the GIL) for ``CALL_MS``; its ms."""
    start = time.perf_counter()
    while time.perf_counter() - start < CALL_MS / 1e3:
        hashlib.sha256(BLOCK).digest()
    return (time.perf_counter() - start) * 1e3


@app.get("/readyz")
async def ready() -> dict:
    return {"ready": True}


@app.post("/api/v1/inspect", response_model=InspectionResult)
async def inspect(request: Request, wafer_id: Annotated[str, Query()],
                  inspection_point: Annotated[int, Query()]) -> InspectionResult:
    body = await request.body()
    took = await asyncio.get_running_loop().run_in_executor(None, call, body)
    return ANSWER.model_copy(update={"inference_time_ms": took})


if __name__ == "__main__":
    sys.setswitchinterval(5e-4)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
