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
        self.guardrail = Counter("fabguard_guardrail_rollbacks", "Candidates rolled back by the miss-rate guardrail",
                                 ["model_version"], registry=r)
        self.experiment_running = Gauge("fabguard_experiment_running", "1 for the candidate of the running shadow "
                                        "or canary experiment", ["model_version", "mode"], registry=r)
        self.canary_share = Gauge("fabguard_canary_share", "Share of wafers the canary candidate decides", registry=r)
        self.shadow = Histogram("fabguard_shadow_seconds", "Shadow candidate's scoring time per image (after the "
                                "answer)", registry=r, buckets=LATENCY)

        self.drift_gauges = {  # report path -> gauge; refreshed by fabguard.serve.monitor, labelled by version
            ("score", "pvalue"): Gauge("fabguard_drift_score_pvalue", "KS p-value of the window's PASS scores against "
                                       "the validation scores <= REVIEW (NaN until the window fills)",
                                       ["model_version"], registry=r),
            ("score", "statistic"): Gauge("fabguard_drift_score_statistic", "KS statistic of the PASS scores",
                                          ["model_version"], registry=r),
            ("score", "n_window"): Gauge("fabguard_drift_window_size", "PASS inspections in the drift window",
                                         ["model_version"], registry=r),
            ("score", "n_reference"): Gauge("fabguard_drift_reference_size", "Reference scores the window is "
                                            "compared with", ["model_version"], registry=r),
            ("score", "window_mean"): Gauge("fabguard_drift_pass_score_mean", "Mean anomaly score of the PASS "
                                            "images in the window", ["model_version"], registry=r),
            ("score", "reference_mean"): Gauge("fabguard_drift_reference_score_mean", "Mean reference score",
                                               ["model_version"], registry=r),
            ("latent", "pvalue"): Gauge("fabguard_drift_latent_pvalue", "Smallest Benjamini-Hochberg adjusted "
                                        "p-value of the per-dimension latent mean and variance tests",
                                        ["model_version"], registry=r),
            ("latent", "shifted_dimensions"): Gauge("fabguard_drift_latent_shifted_dimensions", "Latent tests with "
                                                    "adjusted p < alpha", ["model_version"], registry=r),
            ("latent", "mean_shift"): Gauge("fabguard_drift_latent_mean_shift", "RMS over dimensions of the latent "
                                            "mean shift in reference standard deviations", ["model_version"],
                                            registry=r),
            ("latent", "variance_ratio"): Gauge("fabguard_drift_latent_variance_ratio", "Geometric mean over "
                                                "dimensions of window / reference latent variance",
                                                ["model_version"], registry=r),
        }
        self.review_gauges = {  # Estimate field -> gauge; refreshed by fabguard.serve.review.publish (last 24 h)
            name: Gauge(f"fabguard_review_{name}", text, registry=r) for name, text in (
                ("fnr", "Miss rate estimated from audited PASS images, last 24 h (NaN: not estimable)"),
                ("fnr_low", "Lower end of the miss rate's 95% interval"),
                ("fnr_high", "Upper end of the miss rate's 95% interval"),
                ("fpr", "False-alarm rate (normal images REJECTed / normal images) from audited REJECTs, last 24 h"),
                ("fpr_low", "Lower end of the false-alarm rate's 95% interval"),
                ("fpr_high", "Upper end of the false-alarm rate's 95% interval"),
                ("reject_override", "Share of REJECTs that inspectors label normal, last 24 h"),
                ("agreement", "Inspector agreement on double-labelled REVIEW images, last 24 h"),
                ("agreement_items", "REVIEW images with two labels, last 24 h"),
                ("labelled", "Inspections of the last 24 h with a label"),
                ("waiting", "Review queue items that still want a label"))}
        for gauge in self.review_gauges.values():
            gauge.set(float("nan"))

    def drift(self, report: dict | None) -> None:
        """Set the drift gauges from a :func:`fabguard.serve.drift.assess` report (None: no model serving);
        a value not computed yet is NaN, which no alert comparison matches."""
        for (part, key), gauge in self.drift_gauges.items():
            gauge.clear()
            if report is not None:
                value = report[part][key]
                gauge.labels(report["model_version"]).set(float("nan") if value is None else value)

    def models(self, loaded: list[str], serving: str | None) -> None:
        """Set the model gauges from the registry's state."""
        self.model_loaded.clear()
        self.model_serving.clear()
        for version in loaded:
            self.model_loaded.labels(version).set(1)
        if serving:
            self.model_serving.labels(serving).set(1)

    def experiment(self, running) -> None:
        """Set the experiment gauges from :class:`fabguard.serve.experiments.Running` (or None)."""
        self.experiment_running.clear()
        self.canary_share.set(0.0 if running is None else running.share)
        if running is not None:
            self.experiment_running.labels(running.candidate.version, running.mode).set(1)
