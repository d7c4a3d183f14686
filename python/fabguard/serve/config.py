"""Service settings: one pydantic-settings class, read from ``FABGUARD_*`` environment variables, an optional
TOML file (``--config``) and the command line (which wins)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fabguard.errors import InputError


def default_home() -> Path:
    """``$FABGUARD_HOME``, else the platform's user data folder."""
    import platformdirs

    return Path(os.environ.get("FABGUARD_HOME") or platformdirs.user_data_dir("fabguard"))


class Settings(BaseSettings):
    """Everything the service reads at start. Limits default to what an inspection camera sends (a few MB,
    a few megapixels) with room to spare; thresholds of the validation gate default to the case study's
    targets."""

    model_config = SettingsConfigDict(env_prefix="FABGUARD_", extra="forbid")

    home: Path = Field(default_factory=default_home, description="state folder: registry, images, heatmaps, log")
    db: str | None = Field(None, description="SQLAlchemy URL of the log and registry (default: SQLite in home)")
    token: str | None = Field(None, description="bearer token of the write endpoints")
    token_file: Path | None = Field(None, description="file holding the bearer token (first line)")
    token_on_inspect: bool = Field(False, description="also require the token on inspection and history")
    max_body_bytes: int = Field(32 * 2**20, ge=1024)
    max_pixels: int = Field(16 * 2**20, ge=256, description="largest width x height accepted (decompression bombs)")
    max_batch: int = Field(16, ge=1, le=1024, description="dynamic batching: most images per ONNX Runtime call")
    max_wait_ms: float = Field(2.0, ge=0, le=1000, description="dynamic batching: longest wait for a fuller batch")
    threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads (default: one per core)")
    keep_loaded: int = Field(5, ge=1, le=50, description="model versions kept loaded for instant rollback")
    sync_seconds: float = Field(1.0, gt=0, description="how often a replica re-reads the promoted version")
    router_dir: Path | None = Field(None, description="active-inspection model folder (fabguard active train)")
    store_images: bool = Field(True, description="keep each inspected image under home/images")
    gate_min_auroc: float = Field(0.95, ge=0, le=1)
    gate_min_auprc: float = Field(0.85, ge=0, le=1)
    gate_max_fnr_at_fpr5: float = Field(0.005, ge=0, le=1)
    gate_max_latency_ms: float = Field(50.0, gt=0)
    canary_share: float = Field(0.1, gt=0, lt=1, description="share of wafers a canary candidate decides")
    guardrail_max_fnr: float = Field(0.01, gt=0, lt=1, description="a candidate whose miss rate is above this "
                                     "with 95% confidence is rolled back (10x the case study's 0.1% target)")
    guardrail_seconds: float = Field(10.0, gt=0, description="how often the guardrail re-estimates the miss rate")
    target_fnr: float = Field(0.001, ge=0, le=1, description="miss rate a candidate must show to be recommended")
    target_fpr: float = Field(0.05, ge=0, le=1, description="false-alarm rate a candidate must show to be recommended")
    compare_min_images: int = Field(100, ge=1, description="images per model before a comparison can recommend")
    drift_window: int = Field(500, ge=2, description="drift: the newest PASS inspections compared with the reference")
    drift_min_window: int = Field(50, ge=2, description="drift: PASS inspections needed before a test is run")
    drift_alpha: float = Field(0.01, gt=0, lt=1, description="drift: alert below this p-value (case study: 0.01)")
    monitor_seconds: float = Field(30.0, gt=0, description="how often drift gauges and the status timeline refresh")
    status_hours: int = Field(24, ge=1, le=24 * 31, description="hours of history on the status page")
    audit_pass_rate: float = Field(0.01, ge=0, le=1, description="review: share of PASS decisions audited "
                                   "(without them the miss rate cannot be estimated)")
    audit_reject_rate: float = Field(0.1, ge=0, le=1, description="review: share of REJECT decisions audited")
    second_label_rate: float = Field(0.1, ge=0, le=1, description="review: share of REVIEW decisions labelled "
                                     "by a second inspector (inspector agreement)")
    review_seed: int = Field(0, description="review: seed of the audit and second-label samples (a hash)")
    review_token: str | None = Field(None, description="review: a token that may post labels and nothing else")
    review_defect_types: list[str] = Field(["scratch", "particle", "crack", "contamination", "pattern", "other"],
                                           description="review: defect types the review page offers")
    review_seconds: float = Field(60.0, gt=0, description="how often the review gauges (last 24 h) refresh")
    retain_images_days: float | None = Field(None, gt=0, description="retention: stored images and heatmaps "
                                             "older than this are deleted, except those of the review queue "
                                             "(None: kept forever)")
    retention_seconds: float = Field(3600.0, gt=0, description="retention: how often expired images are deleted")

    @model_validator(mode="after")
    def _drift_window(self) -> "Settings":
        if self.drift_min_window > self.drift_window:
            raise ValueError(f"drift_min_window {self.drift_min_window} is larger than drift_window {self.drift_window}")
        return self

    @model_validator(mode="after")
    def _read_token_file(self) -> "Settings":
        if self.token is None and self.token_file is not None:
            try:
                self.token = self.token_file.read_text().strip().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise ValueError(f"token file {self.token_file}: cannot read a token ({exc})") from None
            if not self.token:
                raise ValueError(f"token file {self.token_file}: empty")
        return self

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.home / 'fabguard.db'}"


def load_settings(config_file: str | os.PathLike | None = None, **overrides) -> Settings:
    """Settings from the environment, then ``config_file`` (TOML, keys as the field names), then
    ``overrides`` (None values ignored); an invalid value raises :class:`InputError` naming it."""
    from pydantic import ValidationError

    values = {}
    if config_file is not None:
        try:
            values = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"config file {config_file}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"settings: {problems}") from None
