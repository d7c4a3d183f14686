"""Drift monitoring: the reference a model carries, the tests on the PASS window, GET /api/v1/drift, gauges."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from bench.serve.drift_bench import observe, stream
from bench.serve.pca_wafer import VERSION as PCA
from bench.serve.pca_wafer import pca_wafer
from fabguard.anomaly.reference import DriftReference
from fabguard.errors import InputError, ModelFileError
from fabguard.serve import db
from fabguard.serve.bundle import N_NORMAL
from fabguard.serve.drift import Baseline, compare, decode_latents, encode_latent


@pytest.fixture(scope="module")
def baseline(bundled):
    return Baseline.from_validation(bundled.drift_reference, bundled.thresholds.review)


@pytest.fixture(scope="module")
def pca(tmp_path_factory):
    """(artifact, report) of pca-wafer-v1.1.0, the model whose alarms and false alarms the drift bench recorded
    (bench/results/serve/drift.md): the tests of what the monitor detects use it."""
    return pca_wafer(tmp_path_factory.mktemp("pca"))


@pytest.fixture(scope="module")
def pca_inspector(pca):
    from fabguard.anomaly.runtime import Inspector

    return Inspector(pca[0], providers=["CPUExecutionProvider"], threads=1)


@pytest.fixture(scope="module")
def pca_baseline(pca_inspector):
    return Baseline.from_validation(pca_inspector.drift_reference, pca_inspector.thresholds.review)


@pytest.fixture(scope="module")
def pca_line(pca_inspector):
    """1,200 normal 64-pixel wafers (its size) through pca-wafer-v1.1.0."""
    return observe(pca_inspector, stream(1200, np.random.default_rng(5), 64))


def insert(engine, version, scores, decisions, latents, start=None, step=timedelta(seconds=1)):
    """Inspections straight into the log (the inspection path fills ``latent`` the same way)."""
    start = start or datetime.now(timezone.utc) - timedelta(minutes=30)
    rows = [{"id": uuid.uuid4().hex, "created_at": start + i * step, "wafer_id": f"WF-{i}", "inspection_point": 0,
             "model_version": version, "anomaly_score": float(s), "decision": str(d), "confidence": 0.9,
             "inference_time_ms": 0.5, "image_ref": None, "heatmap_ref": "heatmaps/x.png",
             "latent": None if latents is None else encode_latent(v)}
            for i, (s, d, v) in enumerate(zip(scores, decisions, latents if latents is not None else scores))]
    with engine.begin() as c:
        c.execute(db.inspections.insert(), rows)


def test_exported_model_carries_its_validation_reference(second_model, tmp_path):
    from fabguard.anomaly.base import Detector
    from fabguard.anomaly.pca import PCADetector
    from fabguard.anomaly.runtime import Inspector
    from fabguard.anomaly.synthetic import synthetic_set

    # conftest's second model, fitted again the same way (same data and seed: the same detector)
    detector = PCADetector(n_components=8, input_size=32, seed=3).fit(synthetic_set(120, 0, 32, seed=3).images)
    ref = detector.drift_reference_
    assert ref.embedding == "heatmap_grid" and ref.embeddings.shape == (detector.n_val_, 128)
    np.testing.assert_array_equal(ref.scores, detector.val_scores_)
    read = Inspector(second_model[0], providers=["CPUExecutionProvider"]).drift_reference
    np.testing.assert_array_equal(read.scores, ref.scores)  # JSON numbers round-trip float64 exactly
    np.testing.assert_array_equal(read.embeddings, ref.embeddings)  # base64 of the float32 bytes
    detector.save(tmp_path / "m.pt")
    again = Detector.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(again.drift_reference_.embeddings, ref.embeddings)
    np.testing.assert_array_equal(again.drift_reference_.scores, ref.scores)


def test_crafted_reference_is_refused():
    good = DriftReference(np.array([0.1, 0.2]), "latent", np.zeros((2, 128), np.float32)).as_dict()
    assert DriftReference.from_dict(good, "m.onnx").embeddings.shape == (2, 128)
    bad = [({**good, "scores": [0.1, float("nan")]}, "finite"), ({**good, "embedding": "pixels"}, "one of"),
           ({**good, "embedding_rows": 3}, "embedding_rows"), ({**good, "embeddings": "@@"}, "base64"),
           ({**good, "embeddings": base64.b64encode(b"\0" * 12).decode()}, "2 x 128"),
           ({k: v for k, v in good.items() if k != "scores"}, "keys"),
           ({**good, "embeddings": base64.b64encode(np.full((2, 128), np.inf, "<f4").tobytes()).decode()}, "NaN")]
    for data, words in bad:
        with pytest.raises(ModelFileError, match=words):
            DriftReference.from_dict(data, "m.onnx")


def test_latent_codec():
    vector = np.linspace(-1, 1, 128, dtype=np.float32)
    np.testing.assert_array_equal(decode_latents([encode_latent(vector)] * 2), np.stack([vector] * 2))
    with pytest.raises(InputError, match="128"):
        encode_latent(np.zeros(64))
    with pytest.raises(InputError, match="row 1"):
        decode_latents([encode_latent(vector), b"\0" * 12])


def test_bundled_model_reference_is_cut_at_the_review_threshold(bundled, baseline):
    reference = bundled.drift_reference
    assert len(reference.scores) == bundled.thresholds.n_val == N_NORMAL // 5  # 20% validate
    assert reference.embedding == "latent"  # the feature VAE's mu
    assert baseline.scores.max() <= bundled.thresholds.review < reference.scores.max()
    assert len(baseline.embeddings) == len(baseline.scores) == (reference.scores <= bundled.thresholds.review).sum()


def test_stationary_windows_do_not_alarm(pca_line, pca_baseline):
    scores, decisions, embeddings = pca_line
    keep = decisions == "PASS"
    for w in [slice(i, i + 250) for i in range(0, 1000, 250)]:
        report = compare(scores[keep][w], embeddings[keep][w], pca_baseline, 0.01, 50)
        assert not report["alarm"], report
        assert report["score"]["pvalue"] > 0.01 and report["latent"]["pvalue"] > 0.01


def test_pass_scores_need_the_truncated_reference():
    """PASS scores are the normal scores below the REVIEW threshold (here their 95% quantile): against the
    untruncated reference a stationary line differs by the 5% of reference mass above the cut (KS statistic
    about 0.05), which large samples always detect: sqrt(n_eff) * 0.05 = 3.2 for n_eff = 4000 gives p < 1e-8."""
    from fabguard.serve.drift import score_test

    rng = np.random.default_rng(0)
    reference = rng.gamma(4.0, 1e-4, 20_000)
    review = np.quantile(reference, 0.95)
    line = rng.gamma(4.0, 1e-4, 6_000)
    window = line[line <= review][:5_000]
    assert score_test(window, reference[reference <= review], 0.01, 50)["pvalue"] > 0.01
    assert score_test(window, reference, 0.01, 50)["pvalue"] < 1e-6


def test_a_small_brightness_shift_and_a_new_defect_type_alarm(pca_inspector, pca_baseline):
    rng = np.random.default_rng(9)
    scores, decisions, embeddings = observe(pca_inspector, stream(400, rng, 64, brightness=0.005))
    keep = decisions == "PASS"
    assert keep.sum() >= 50  # still some PASS images to test
    shifted = compare(scores[keep], embeddings[keep], pca_baseline, 0.01, 50)
    assert shifted["score"]["alarm"] and shifted["score"]["window_mean"] > shifted["score"]["reference_mean"]
    scores, decisions, embeddings = observe(pca_inspector, stream(800, rng, 64, stain_share=0.5))
    keep = decisions == "PASS"
    assert compare(scores[keep][-500:], embeddings[keep][-500:], pca_baseline, 0.01, 50)["alarm"]


def test_small_window_waits(baseline, normal_line):
    scores, _, embeddings = normal_line
    report = compare(scores[:10], embeddings[:10], baseline, 0.01, 50)
    assert report["score"]["pvalue"] is None and "waiting" in report["score"]["status"] and not report["alarm"]
    assert report["latent"]["pvalue"] is None and "waiting" in report["latent"]["status"]


def test_drift_api_and_gauges_over_the_log(app_client, pca, pca_line, pca_inspector):
    client, app = app_client
    service = app.state.service
    service.registry.register(pca[0], PCA, pca[1])
    service.registry.promote(PCA)
    scores, decisions, embeddings = pca_line
    insert(service.engine, PCA, scores[:600], decisions[:600], embeddings[:600])
    report = client.get("/api/v1/drift").json()
    assert report["model_version"] == PCA and report["reference"]["source"] == "validation"
    assert report["window"]["n"] == min(500, int((decisions[:600] == "PASS").sum())) == report["window"]["n_embeddings"]
    assert report["score"]["pvalue"] > 0.01 and report["latent"]["pvalue"] > 0.01 and not report["alarm"]
    assert sum(h["n"] for h in report["history"]) == (decisions[:600] == "PASS").sum()
    # then the line brightens: the newest PASS images are shifted ones
    shifted = observe(pca_inspector, stream(1500, np.random.default_rng(3), 64, brightness=0.005))
    insert(service.engine, PCA, *shifted, start=datetime.now(timezone.utc) - timedelta(minutes=5),
           step=timedelta(milliseconds=100))
    report = client.get("/api/v1/drift").json()
    assert report["alarm"] and report["score"]["pvalue"] < 0.01
    service.monitor.refresh()  # what the lifespan task runs every monitor_seconds
    metrics = client.get("/metrics").text
    line = next(l for l in metrics.splitlines() if l.startswith("fabguard_drift_score_pvalue{"))
    assert PCA in line and float(line.split()[-1]) == pytest.approx(report["score"]["pvalue"])


def test_a_model_without_reference_uses_its_first_pass_window(app_client, second_model, pca_line, tmp_path):
    import onnx

    from fabguard.runtime.metadata import KEY, attach, read_metadata

    client, app = app_client
    artifact, report = second_model
    proto = onnx.load(artifact)
    meta = read_metadata(artifact, "anomaly-detector")
    del meta["drift_reference"]
    del proto.metadata_props[:]
    attach(proto, meta)
    onnx.save(proto, tmp_path / "old.onnx")
    assert KEY and "drift_reference" not in read_metadata(tmp_path / "old.onnx", "anomaly-detector")
    version = "old-v1.0.0"
    app.state.service.registry.register(tmp_path / "old.onnx", version, report)
    answer = client.get("/api/v1/drift", params={"version": version}).json()
    assert answer["reference"]["source"] == "first_window" and answer["window"]["n"] == 0
    assert "no validation reference" in answer["reference"]["note"] and not answer["alarm"]
    scores, decisions, embeddings = pca_line  # any stationary line: the reference is its own first window
    insert(app.state.service.engine, version, scores[:800], ["PASS"] * 800, embeddings[:800])
    answer = client.get("/api/v1/drift", params={"version": version}).json()
    # the first 500 PASS are the reference; the window is the newest after them, not overlapping it
    assert answer["reference"]["n_scores"] == 500 and answer["window"]["n"] == 300
    assert answer["score"]["pvalue"] > 0.01  # the same stationary line on both sides


def test_drift_refusals(client):
    assert client.get("/api/v1/drift", params={"version": "Bad"}).status_code == 422
    missing = client.get("/api/v1/drift", params={"version": "nope-v1.0.0"})
    assert missing.status_code == 404 and "not registered" in missing.json()["detail"]


def test_drift_settings_are_checked():
    from fabguard.serve.config import load_settings

    with pytest.raises(InputError, match="drift_min_window"):
        load_settings(drift_window=40, drift_min_window=50)
