"""Monitoring work off the request path, every ``monitor_seconds`` (a lifespan task): the drift report of the
serving version (its gauges, :meth:`fabguard.serve.metrics.Metrics.drift`) and a timeline of what the status
page plots for sites without Prometheus: inspection latency quantiles, queue depth and the drift p-values.

The timeline lives in this process (one replica's view, lost on restart), as Prometheus would hold it; the
inspection counts and PASS scores per hour come from the shared log instead (:mod:`fabguard.serve.routers.status`).
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime, timezone

import numpy as np

from fabguard.serve.drift import assess
from fabguard.serve.metrics import LATENCY

INSPECT_ROUTE = "/api/v1/inspect"
QUANTILES = (0.5, 0.95, 0.99)


def bucket_quantile(q: float, bounds: np.ndarray, counts: np.ndarray) -> float | None:
    """The ``q`` quantile of observations counted in cumulative histogram buckets (upper ``bounds``, the last
    +Inf), interpolated linearly inside the bucket as Prometheus' ``histogram_quantile`` does; a quantile in
    the +Inf bucket is the largest finite bound. None without observations."""
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    i = int(np.searchsorted(counts, rank, side="left"))
    if i >= len(bounds) - 1:
        return float(bounds[-2])
    lower, below = (0.0, 0.0) if i == 0 else (float(bounds[i - 1]), float(counts[i - 1]))
    inside = counts[i] - below
    return lower + (float(bounds[i]) - lower) * ((rank - below) / inside if inside > 0 else 1.0)


def request_buckets(histogram, route: str) -> tuple[np.ndarray, np.ndarray]:
    """(upper bounds, cumulative counts) of ``fabguard_request_seconds`` for ``route``, all methods and
    statuses together."""
    totals: dict[float, float] = {}
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("route") == route:
                le = float(sample.labels["le"])
                totals[le] = totals.get(le, 0.0) + sample.value
    if not totals:
        bounds = np.array([*LATENCY, np.inf])  # no request yet: the configured buckets, all empty
        return bounds, np.zeros(len(bounds))
    bounds = np.array(sorted(totals))
    return bounds, np.array([totals[b] for b in bounds])


class Monitor:
    """Refreshes the drift gauges and the timeline; ``report`` computes a fresh drift report on demand."""

    def __init__(self, service):
        self.service = service
        settings = service.settings
        self.timeline: deque = deque(maxlen=max(2, int(settings.status_hours * 3600 / settings.monitor_seconds)))
        self.last_report: dict | None = None
        self._previous: np.ndarray | None = None
        self._lock = threading.Lock()

    def report(self, version: str | None = None) -> dict | None:
        """The drift report of ``version`` (default: the serving one; None when nothing serves)."""
        registry, settings = self.service.registry, self.service.settings
        model = registry.serving if version is None else registry.load(version)
        if model is None:
            return None
        inspector = model.inspector
        return assess(self.service.engine, model.version, inspector.thresholds.review, inspector.drift_reference,
                      settings.drift_window, settings.drift_min_window, settings.drift_alpha, settings.status_hours)

    def refresh(self) -> None:
        """One tick: drift gauges of the serving version, then a timeline point."""
        metrics = self.service.metrics
        report = self.report()
        metrics.drift(report)
        bounds, counts = request_buckets(metrics.request, INSPECT_ROUTE)
        with self._lock:
            delta = counts if self._previous is None or len(self._previous) != len(counts) else counts - self._previous
            self._previous = counts
            self.last_report = report
            self.timeline.append({
                "at": datetime.now(timezone.utc), "requests": float(delta[-1]),
                **{f"latency_p{round(q * 100)}_ms": _ms(bucket_quantile(q, bounds, delta)) for q in QUANTILES},
                "queue_depth": _value(metrics.queue_depth), "in_flight": _value(metrics.in_flight),
                "model_version": report and report["model_version"],
                "score_pvalue": report and report["score"]["pvalue"],
                "latent_pvalue": report and report["latent"]["pvalue"],
                "pass_score_mean": report and report["score"]["window_mean"]})

    def points(self) -> list[dict]:
        with self._lock:
            return list(self.timeline)


def _value(gauge) -> float:
    return gauge.collect()[0].samples[0].value


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3
