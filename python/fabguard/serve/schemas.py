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


class ExperimentStart(BaseModel):
    candidate: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}-v\d{1,4}\.\d{1,4}\.\d{1,4}$")
    mode: Literal["shadow", "canary"]
    share: float | None = Field(None, gt=0, lt=1, description="canary: share of wafers (default from settings)")


class ExperimentRecord(BaseModel):
    id: int
    candidate: str
    baseline: str
    mode: Literal["shadow", "canary"]
    share: float
    status: Literal["running", "ended", "promoted", "rolled_back"]
    started_at: datetime
    ended_at: datetime | None
    note: str | None


class Comparison(BaseModel):
    """The candidate against production over one experiment (docs/serve.md, "Shadow and canary")."""

    experiment: ExperimentRecord
    candidate: dict
    production: dict
    tests: dict = Field(description="reject / review: two-sided two-proportion test p-value and verdict")
    alpha: float
    agreement: float | None = Field(description="share of images both models decided alike (shadow)")
    score_ks: dict | None
    inference_ms: dict
    labelled: dict = Field(description="FNR / FPR of each model against reviewed labels, with intervals")
    targets: dict
    recommend_promotion: bool
    reasons: list[str] = Field(description="why promotion is not recommended (empty when it is)")
    caveats: list[str] = Field(description="targets met by the point estimates but not yet by their intervals")


class EventRecord(BaseModel):
    id: int
    at: datetime
    kind: str
    version: str | None
    detail: dict


class DriftReport(BaseModel):
    """GET /api/v1/drift: the serving version's PASS images against its reference (docs/monitoring.md)."""

    model_version: str
    computed_at: datetime
    alpha: float
    alarm: bool = Field(description="a test's p-value is below alpha")
    window: dict = Field(description="size asked, n PASS inspections in it (n_embeddings with a logged latent)")
    reference: dict = Field(description="source: 'validation' (the model's validation images with score <= REVIEW) "
                                        "or 'first_window' (a model without one: its first PASS inspections)")
    score: dict = Field(description="KS test of the PASS scores, window and reference means")
    latent: dict = Field(description="per-dimension mean / variance tests of the 128-value latent, BH-adjusted")
    history: list[dict] = Field(description="mean PASS score per hour")


class StatusReport(BaseModel):
    """GET /api/v1/status: what the status page plots (docs/monitoring.md)."""

    generated_at: datetime
    model_version: str | None
    thresholds: dict | None
    limits: dict = Field(description="the alert rules' limits, drawn on the plots")
    hours: list[dict] = Field(description="per hour: inspections by decision, REJECT rate, mean PASS score")
    score_histogram: dict = Field(description="anomaly scores of the serving version over the last hour")
    timeline: list[dict] = Field(description="this replica's samples: latency quantiles, queue, drift p-values")
    drift: dict | None = Field(description="the latest drift report's tests (None before the first refresh)")


INSPECTOR = r"^[A-Za-z0-9](?:[A-Za-z0-9 ._-]{0,62}[A-Za-z0-9._-])?$"  # no trailing space: "bob " is not a second bob


class ReviewItem(BaseModel):
    """A queued inspection as an inspector sees it (no served model exports a reconstruction: the heatmap,
    per-pixel reconstruction error for the VAE, is what is shown beside the image)."""

    inspection_id: str
    reason: Literal["review", "audit"] = Field(description="review: a REVIEW decision; audit: a sampled PASS / REJECT")
    labels_wanted: int = Field(description="2 where inspector agreement is measured")
    labels: int = Field(description="labels given so far")
    queued_at: datetime
    wafer_id: str
    inspection_point: int
    model_version: str
    anomaly_score: float
    decision: Decision
    confidence: float
    image_url: str | None = Field(description="the stored image as PNG (None when images are not stored)")
    heatmap_url: str


class ReviewQueue(BaseModel):
    waiting: int = Field(description="queue items that still want a label (all inspectors)")
    defect_types: list[str]
    items: list[ReviewItem]


class LabelIn(BaseModel):
    model_config = {"extra": "forbid"}

    inspector: str = Field(pattern=INSPECTOR, description="the inspector's name or badge")
    label: Literal["normal", "defective"]
    defect_type: str | None = Field(None, max_length=64, description="with 'defective': one of the configured types")


class LabelRecord(BaseModel):
    id: int
    inspection_id: str
    inspector: str
    label: Literal["normal", "defective"]
    defect_type: str | None
    created_at: datetime
    labels: int = Field(description="labels the item has now")
    labels_wanted: int


class ReviewFigures(BaseModel):
    """Review figures of one window (docs/review.md): None where not estimable, with the reason in notes."""

    since: datetime
    until: datetime
    version: str | None
    arm: str | None
    inspections: int
    labelled: int
    fnr: float | None = Field(description="defective images PASSed / defective images")
    fnr_low: float | None
    fnr_high: float | None
    fpr: float | None = Field(description="normal images REJECTed / normal images")
    fpr_low: float | None
    fpr_high: float | None
    reject_override: float | None = Field(description="share of REJECTs that inspectors label normal")
    reject_override_low: float | None
    reject_override_high: float | None
    agreement: float | None = Field(description="share of double-labelled REVIEW images whose labels agree")
    agreement_low: float | None
    agreement_high: float | None
    agreement_items: int
    level: float
    cells: dict = Field(description="'logged/evaluated' decision -> size, labelled, defective (sum of labels)")
    notes: list[str]
    review_label_error: float = Field(description="per-inspector error rate on REVIEW images implied by their "
                                      "agreement; labelled-defective counts there are corrected for it")
