"""Prometheus metrics of one app (their own ``CollectorRegistry``, so several apps in one process, as in the
tests, do not collide). Latencies are histograms, so P50 / P95 / P99 come from ``histogram_quantile``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, max_batch: int):
        r = self.registry = CollectorRegistry()
        self.inspections = Counter("fabguard_inspections", "Inspections answered, by decision and model version",
                                   ["decision", "model_version"], registry=r)
        self.score = Histogram("fabguard_anomaly_score", "Anomaly scores", ["model_version"], registry=r,
                               buckets=(1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10))
        self.inference = Histogram("fabguard_inference_seconds", "ONNX Runtime time per batch", registry=r,
                                   buckets=LATENCY)
        self.request = Histogram("fabguard_request_seconds", "HTTP request time in the service",
                                 ["method", "route", "status"], registry=r, buckets=LATENCY)
        self.in_flight = Gauge("fabguard_requests_in_flight", "HTTP requests being served", registry=r)
        self.queue_depth = Gauge("fabguard_queue_depth", "Images waiting for inference", registry=r)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, max_batch})
        self.batch_size = Histogram("fabguard_batch_size", "Images per ONNX Runtime call", registry=r,
                                    buckets=[s for s in sizes if s <= max_batch])
        self.model_loaded = Gauge("fabguard_model_loaded", "1 for each model version loaded in this process",
                                  ["model_version"], registry=r)
        self.model_serving = Gauge("fabguard_model_serving", "1 for the version new inspections use",
                                   ["model_version"], registry=r)
        self.log_write = Histogram("fabguard_log_write_seconds", "Time to commit one inspection to the log",
                                   registry=r, buckets=LATENCY)
        self.log_errors = Counter("fabguard_log_write_errors", "Inspections refused because the log was "
                                  "unavailable (answered 503)", registry=r)

    def models(self, loaded: list[str], serving: str | None) -> None:
        """Set the model gauges from the registry's state."""
        self.model_loaded.clear()
        self.model_serving.clear()
        for version in loaded:
            self.model_loaded.labels(version).set(1)
        if serving:
            self.model_serving.labels(serving).set(1)
