"""Request and response bodies (pydantic), so ``/docs`` shows the whole API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

WAFER_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # it becomes part of file names and URLs: no '.', '/', '%'
MAX_POINT = 1_000_000
Decision = Literal["PASS", "REVIEW", "REJECT"]


class Problem(BaseModel):
    """Every error answer: what is wrong."""

    detail: str | list


class InspectionResult(BaseModel):
    """The case study's response, plus ``inspection_id`` (the log's key)."""

    wafer_id: str
    inspection_point: int
    anomaly_score: float
    decision: Decision
    confidence: float = Field(description="0.5 on a decision threshold, towards 1 far from both (docs/serve.md)")
    heatmap_url: str
    latent_vector: list[float] = Field(description="128 values: the VAE's mu, or the heatmap on an 8x16 grid")
    model_version: str
    inference_time_ms: float
    inspection_id: str


class InspectionRecord(BaseModel):
    """One row of the inspection log."""

    inspection_id: str
    created_at: datetime
    wafer_id: str
    inspection_point: int
    model_version: str
    anomaly_score: float
    decision: Decision
    confidence: float
    inference_time_ms: float
    image_ref: str | None
    heatmap_url: str


class ModelRecord(BaseModel):
    version: str
    name: str
    sha256: str
    report: dict
    registered_at: datetime
    serving: bool
    loaded: bool


class Health(BaseModel):
    status: str
    model_version: str | None = None
    loaded: list[str] = []
