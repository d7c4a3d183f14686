"""The HTTP floor of the latency bench: what a request costs on this machine before the service does any
work of its own. ``python bench/serve/floor_app.py PORT`` serves ``POST /api/v1/inspect`` on the stack
``fabguard serve`` runs (FastAPI, uvicorn with uvloop and httptools, the same switch interval): it reads the
image body, crosses to a worker thread and back once (as an inspection does), and answers a fixed
:class:`~fabguard.serve.schemas.InspectionResult` of the same size; no decode, model, scoring or log.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import uvicorn
from fabguard.serve.schemas import InspectionResult
from fastapi import FastAPI, Query, Request

ANSWER = InspectionResult(wafer_id="WF-1", inspection_point=1, anomaly_score=0.5, decision="PASS", confidence=0.9,
                          heatmap_url="/api/v1/heatmaps/WF-1-1-000000000000.png", latent_vector=[0.123456789] * 128,
                          model_version="floor-v0.0.0", inference_time_ms=0.0, inspection_id="0" * 32)
app = FastAPI()


@app.get("/readyz")
async def ready() -> dict:
    return {"ready": True}


@app.post("/api/v1/inspect", response_model=InspectionResult)
async def inspect(request: Request, wafer_id: Annotated[str, Query()],
                  inspection_point: Annotated[int, Query()]) -> InspectionResult:
    body = await request.body()
    await asyncio.get_running_loop().run_in_executor(None, len, body)
    return ANSWER


if __name__ == "__main__":
    sys.setswitchinterval(5e-4)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
