"""Shadow and canary experiments: who decides, what is logged, the comparison report, the guardrail, refusals,
and the ``fabguard models shadow | canary | compare | stop`` commands."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import sqlalchemy as sa

from fabguard.cli import main
from fabguard.serve import db
from fabguard.serve.bundle import VERSION as DEFAULT
from fabguard.serve.experiments import canary_bucket, two_proportions
from tests.serve.conftest import TOKEN

CANDIDATE = "pca-small-v0.1.0"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def register_candidate(api, second_model):
    artifact, report = second_model
    api.register(artifact, CANDIDATE, report)


def start(client, mode, **extra):
    r = client.post("/api/v1/experiments", json={"candidate": CANDIDATE, "mode": mode, **extra}, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()


def wait_for(predicate, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_canary_bucket_is_stable_and_uniform():
    """Same wafer, same bucket; over 20,000 wafers the share below 0.1 is 0.1 within 5 binomial standard
    deviations (sd = sqrt(0.1 * 0.9 / 20000) = 0.0021); another experiment id draws other wafers."""
    wafers = [f"WF-{i:06d}" for i in range(20000)]
    buckets = np.array([canary_bucket(1, w) for w in wafers])
    assert np.array_equal(buckets, [canary_bucket(1, w) for w in wafers])
    assert abs(np.mean(buckets < 0.1) - 0.1) < 5 * np.sqrt(0.1 * 0.9 / 20000)
    other = np.array([canary_bucket(2, w) for w in wafers])
    assert np.mean((buckets < 0.1) & (other < 0.1)) < 0.02  # independent draws: 0.01 expected


def test_two_proportion_test_matches_statsmodels():
    from statsmodels.stats.proportion import proportions_ztest

    for k1, n1, k2, n2 in [(12, 400, 30, 410), (5, 100, 5, 100), (0, 50, 7, 60), (90, 1000, 40, 990)]:
        _, expected = proportions_ztest([k1, k2], [n1, n2])
        assert two_proportions(k1, n1, k2, n2) == pytest.approx(expected, rel=1e-12)
    assert two_proportions(0, 0, 1, 10) is None


def test_canary_decides_whole_wafers_by_hash(app_client, api, second_model, wafer_images):
    client, app = app_client
    register_candidate(api, second_model)
    experiment = start(client, "canary", share=0.5)
    assert experiment["mode"] == "canary" and experiment["baseline"] == DEFAULT and experiment["share"] == 0.5
    image = wafer_images[0][0]
    seen = {}
    for w in range(12):
        wafer = f"WF-C{w:03d}"
        versions = {client.post("/api/v1/inspect", params={"wafer_id": wafer, "inspection_point": p},
                                content=image).json()["model_version"] for p in range(3)}
        assert len(versions) == 1  # every image of a wafer goes to one model
        seen[wafer] = versions.pop()
    for wafer, version in seen.items():
        assert version == (CANDIDATE if canary_bucket(experiment["id"], wafer) < 0.5 else DEFAULT)
    assert set(seen.values()) == {DEFAULT, CANDIDATE}  # 12 wafers at 0.5: both arms, P(one arm) = 2^-11
    engine = app.state.service.engine
    with engine.connect() as c:
        arms = dict(c.execute(sa.select(db.inspections.c.wafer_id, db.inspections.c.arm)).all())
    assert all(arms[w] == ("canary" if v == CANDIDATE else "production") for w, v in seen.items())
    report = client.get(f"/api/v1/experiments/{experiment['id']}/report").json()
    n_canary = 3 * sum(v == CANDIDATE for v in seen.values())
    assert report["candidate"]["n"] == n_canary and report["production"]["n"] == 36 - n_canary
    assert report["recommend_promotion"] is False and report["reasons"]


def test_shadow_scores_every_image_and_production_decides(app_client, api, second_model, wafer_images):
    from fabguard.anomaly.runtime import Inspector

    client, app = app_client
    register_candidate(api, second_model)
    experiment = start(client, "shadow")
    answers = [client.post("/api/v1/inspect", params={"wafer_id": "WF-S", "inspection_point": i},
                           content=image).json() for i, image in enumerate(wafer_images[0])]
    assert {a["model_version"] for a in answers} == {DEFAULT}
    engine = app.state.service.engine

    def shadow_rows():
        with engine.connect() as c:
            return c.execute(sa.select(db.shadow_scores)).mappings().all()

    wait_for(lambda: len(shadow_rows()) == len(answers))
    rows = {r["inspection_id"]: r for r in shadow_rows()}
    assert {r["version"] for r in rows.values()} == {CANDIDATE}
    # the same ONNX model on the same decoded image, batch of one: the very same score
    inspector = Inspector(second_model[0], providers=["CPUExecutionProvider"], threads=1)
    direct = inspector.inspect(list(wafer_images[0]))
    for answer, score in zip(answers, direct.scores):
        assert rows[answer["inspection_id"]]["anomaly_score"] == float(score)
    report = client.get(f"/api/v1/experiments/{experiment['id']}/report").json()
    assert report["candidate"]["n"] == report["production"]["n"] == len(answers)
    decisions = [a["decision"] for a in answers]
    shadow = [rows[a["inspection_id"]]["decision"] for a in answers]
    assert report["agreement"] == pytest.approx(np.mean(np.array(decisions) == np.array(shadow)), abs=0)
    assert report["score_ks"]["p_value"] <= 1


def test_experiment_refusals(app_client, api, second_model):
    client, _ = app_client
    post = lambda body, **kw: client.post("/api/v1/experiments", json=body, **kw)  # noqa: E731
    assert post({"candidate": CANDIDATE, "mode": "shadow"}).status_code == 401
    assert post({"candidate": CANDIDATE, "mode": "shadow"}, headers=AUTH).status_code == 404
    register_candidate(api, second_model)
    assert post({"candidate": DEFAULT, "mode": "shadow"}, headers=AUTH).status_code == 409
    for bad in ({"candidate": CANDIDATE, "mode": "blue"}, {"candidate": CANDIDATE, "mode": "canary", "share": 1.5},
                {"candidate": "../x", "mode": "shadow"}, {"mode": "shadow"}):
        r = post(bad, headers=AUTH)
        assert r.status_code == 422 and "detail" in r.json()
    first = start(client, "shadow")
    assert post({"candidate": CANDIDATE, "mode": "canary"}, headers=AUTH).status_code == 409
    assert client.post(f"/api/v1/experiments/{first['id']}/stop").status_code == 401
    assert client.post(f"/api/v1/experiments/{first['id']}/stop", headers=AUTH).json()["status"] == "ended"
    assert client.post(f"/api/v1/experiments/{first['id']}/stop", headers=AUTH).status_code == 409
    assert client.get("/api/v1/experiments/999").status_code == 404
    assert client.get("/api/v1/experiments/0").status_code == 422
    kinds = [e["kind"] for e in client.get("/api/v1/events").json()]
    assert kinds[:2] == ["shadow_ended", "shadow_started"]
    # since with a UTC offset means that instant (SQLite keeps UTC times); off the calendar in UTC: 422
    hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    for zone in (timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))):
        assert len(client.get("/api/v1/events", params={"since": hour_ago.astimezone(zone).isoformat()}).json()) >= 2
        assert client.get("/api/v1/events", params={
            "since": (hour_ago + timedelta(hours=2)).astimezone(zone).isoformat()}).json() == []
    r = client.get("/api/v1/events", params={"since": "0001-01-01T00:00:00+14:00"})
    assert r.status_code == 422 and "since" in r.json()["detail"]


def test_promoting_the_candidate_ends_its_experiment(app_client, api, second_model):
    client, app = app_client
    register_candidate(api, second_model)
    experiment = start(client, "canary")
    api.promote(CANDIDATE)
    wait_for(lambda: client.get(f"/api/v1/experiments/{experiment['id']}").json()["status"] == "promoted")
    assert app.state.service.experiments.running is None


def _label(engine, inspection_id, label, inspector="ann"):
    from datetime import datetime, timezone

    with engine.begin() as c:
        c.execute(db.reviews.insert().values(inspection_id=inspection_id, inspector=inspector, label=label,
                                             created_at=datetime.now(timezone.utc)))


@pytest.fixture
def audit_all(settings):
    settings.audit_pass_rate = settings.audit_reject_rate = 1.0
    return settings


def test_guardrail_rolls_back_a_candidate_that_misses_defects(audit_all, app_client, api, second_model,
                                                              wafer_images):
    """Every image is reviewed and labelled defective, and the candidate passes some of them: its estimated
    miss rate is far above 1% with 95% confidence, so the guardrail ends the canary, logs and counts it."""
    client, app = app_client
    service = app.state.service
    register_candidate(api, second_model)
    experiment = start(client, "canary", share=0.999)
    assert service.experiments.guard() is None  # no labels: nothing to act on
    answers = [client.post("/api/v1/inspect", params={"wafer_id": f"WF-G{i}", "inspection_point": 0},
                           content=wafer_images[0][i % 8]).json() for i in range(40)]
    passed = [a for a in answers if a["model_version"] == CANDIDATE and a["decision"] == "PASS"]
    assert passed, "the candidate must pass some images for this test"
    for a in answers:  # audit rates of 1 (the fixture below): every image is in the queue; all are defective
        _label(service.engine, a["inspection_id"], "defective")
    fired = service.experiments.guard()
    assert fired is not None and fired["version"] == CANDIDATE
    assert client.get(f"/api/v1/experiments/{experiment['id']}").json()["status"] == "rolled_back"
    assert service.experiments.running is None
    assert client.get("/api/v1/events", params={"kind": "guardrail"}).json()[0]["version"] == CANDIDATE
    assert f'fabguard_guardrail_rollbacks_total{{model_version="{CANDIDATE}"}} 1.0' in client.get("/metrics").text
    after = client.post("/api/v1/inspect", params={"wafer_id": "WF-G0", "inspection_point": 1},
                        content=wafer_images[0][0]).json()
    assert after["model_version"] == DEFAULT


def test_models_cli_shadow_compare_stop(tmp_path, second_model, capsys):
    home = ["--home", str(tmp_path / "h")]  # no service ran on it: nothing bundled, production is its own
    production = "pca-wafer-v1.1.0"
    artifact, _ = second_model
    report = tmp_path / "report.json"
    report.write_text('{"auroc": 0.99, "auprc": 0.97, "fnr_at_fpr5": 0.0, "latency_ms_p50": 0.3}')
    assert main(["models", "add", str(artifact), "--version", production, "--report", str(report), *home]) == 0
    assert main(["models", "promote", production, *home]) == 0
    assert main(["models", "add", str(artifact), "--version", CANDIDATE, "--report", str(report), *home]) == 0
    capsys.readouterr()
    assert main(["models", "shadow", CANDIDATE, *home]) == 0
    assert f"experiment 1: shadow of pca-small-v0.1.0 beside {production}" in capsys.readouterr().out
    assert main(["models", "canary", CANDIDATE, *home]) == 2
    assert "experiment 1 (shadow of pca-small-v0.1.0) is running" in capsys.readouterr().err
    assert main(["models", "compare", *home]) == 0
    assert '"recommend_promotion": false' in capsys.readouterr().out
    assert main(["models", "stop", "1", *home]) == 0
    assert main(["models", "canary", CANDIDATE, "--share", "0.25", *home]) == 0
    assert "on 25% of wafers" in capsys.readouterr().out
