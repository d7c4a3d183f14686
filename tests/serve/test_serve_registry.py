"""Registry: register with a report, validation gate, promote and roll back atomically under load, last N
loaded, two replicas on one database, the ``fabguard models`` commands."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from fabguard.cli import main
from fabguard.client import Client
from fabguard.serve.bundle import VERSION as DEFAULT
from tests.serve.conftest import TOKEN


def test_promote_and_rollback_under_load_fail_no_request(live_server, second_model, wafer_images):
    """8 clients inspect without pause while the model is promoted and rolled back 3 times: every request
    answers 200, each names one of the two versions, and each version always gives its own score."""
    artifact, report = second_model
    admin = Client(live_server, token=TOKEN)
    admin.register(artifact, "pca-small-v0.1.0", report)
    image = wafer_images[0][0]
    answers, errors, stop = [], [], threading.Event()

    def hammer():
        with Client(live_server, timeout=30) as api:
            while not stop.is_set():
                try:
                    answers.append((time.perf_counter(), api.inspect(image, "WF-LOAD", 1)))
                except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                    errors.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    switches = []
    try:
        for _ in range(3):
            time.sleep(0.3)
            admin.promote("pca-small-v0.1.0")
            time.sleep(0.3)
            start = time.perf_counter()
            assert admin.rollback()["version"] == DEFAULT
            switches.append((start, time.perf_counter()))
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    versions = {a["model_version"] for _, a in answers}
    assert versions == {DEFAULT, "pca-small-v0.1.0"}
    # one image, so one score per version, up to float32 rounding: the feature VAE's convolutions round
    # differently in batches of different sizes (dynamic batching), a few ulps of 1.2e-7 each; 1e-5 relative
    # is ~80 ulps, and the two models' scores are orders of magnitude apart
    scores = {v: np.array([a["anomaly_score"] for _, a in answers if a["model_version"] == v]) for v in versions}
    for s in scores.values():
        assert s.max() - s.min() <= 1e-5 * np.abs(s).max()
    assert abs(np.log10(scores[DEFAULT].mean() / scores["pca-small-v0.1.0"].mean())) > 1
    rollback_seconds = max(end - start for start, end in switches)
    assert rollback_seconds < 30  # the case study's limit; the bench measures the actual time
    logged = admin.inspections(wafer_id="WF-LOAD", limit=1000)
    assert len(logged) == min(len(answers), 1000)


def test_last_n_versions_stay_loaded(settings, second_model):
    from fastapi.testclient import TestClient

    from fabguard.serve.app import create_app

    settings.keep_loaded = 2
    artifact, report = second_model
    with TestClient(create_app(settings)) as client:
        api = Client(token=TOKEN, http=client)
        for minor in range(3):
            api.register(artifact, f"pca-small-v0.{minor}.0", report)
            api.promote(f"pca-small-v0.{minor}.0")
        assert client.get("/readyz").json()["loaded"] == ["pca-small-v0.1.0", "pca-small-v0.2.0"]
        assert api.rollback()["version"] == "pca-small-v0.1.0"
        metrics = client.get("/metrics").text
        assert 'fabguard_model_serving{model_version="pca-small-v0.1.0"} 1.0' in metrics
        assert 'fabguard_model_loaded{model_version="pca-small-v0.2.0"} 1.0' in metrics
        versions = [m["version"] for m in api.models()]
        assert versions == [DEFAULT, "pca-small-v0.0.0", "pca-small-v0.1.0", "pca-small-v0.2.0"]


def test_changed_artifacts_are_fetched_again_or_refused(app_client, second_model):
    """A changed cache file is replaced by the database's copy; a changed database copy is refused."""
    import sqlalchemy as sa

    from fabguard.serve import db

    client, app = app_client
    service = app.state.service
    artifact, report = second_model
    api = Client(token=TOKEN, http=client)
    api.register(artifact, "pca-small-v0.1.0", report)
    cached = service.settings.home / "models" / "pca-small-v0.1.0.onnx"
    cached.write_bytes(b"changed")
    assert api.promote("pca-small-v0.1.0")["serving"]
    assert cached.read_bytes() == artifact.read_bytes()
    api.register(artifact, "pca-small-v0.2.0", report)
    (service.settings.home / "models" / "pca-small-v0.2.0.onnx").unlink()
    with service.engine.begin() as c:
        c.execute(sa.update(db.artifacts).where(db.artifacts.c.version == "pca-small-v0.2.0").values(data=b"x"))
    response = client.post("/api/v1/models/pca-small-v0.2.0/promote", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 409 and "SHA-256" in response.json()["detail"]
    assert client.get("/readyz").json()["model_version"] == "pca-small-v0.1.0"


def test_two_replicas_share_the_log_and_a_promotion(tmp_path, second_model, wafer_images):
    """Two apps on one database (as two replicas behind a load balancer): a promotion through one is
    followed by the other within its sync interval, and each sees the other's inspections."""
    from fastapi.testclient import TestClient

    from fabguard.serve.app import create_app
    from fabguard.serve.config import load_settings

    db = f"sqlite:///{tmp_path / 'shared.db'}"
    one, two = (load_settings(home=tmp_path / name, db=db, token=TOKEN, sync_seconds=0.05) for name in "ab")
    artifact, report = second_model
    with TestClient(create_app(one)) as a, TestClient(create_app(two)) as b:
        first, second = Client(token=TOKEN, http=a), Client(token=TOKEN, http=b)
        assert [m["version"] for m in second.models()] == [DEFAULT]  # registered once, by whichever came first
        first.register(artifact, "pca-small-v0.1.0", report)
        first.promote("pca-small-v0.1.0")
        deadline = time.monotonic() + 10
        while b.get("/readyz").json()["model_version"] != "pca-small-v0.1.0":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answer = second.inspect(wafer_images[0][0], "WF-9", 9)
        assert answer["model_version"] == "pca-small-v0.1.0"
        assert first.inspection(answer["inspection_id"])["model_version"] == "pca-small-v0.1.0"


def test_models_cli(tmp_path, second_model, capsys):
    artifact, report = second_model
    home = str(tmp_path / "home")
    assert main(["models", "list", "--home", home]) == 0
    assert "no model registered" in capsys.readouterr().out
    assert main(["models", "add", str(artifact), "--version", "pca-small-v0.1.0", "--report",
                 str(artifact.with_name("report.json")), "--home", home]) == 0
    weak = tmp_path / "weak.json"
    weak.write_text(json.dumps({**report, "fnr_at_fpr5": 0.2}))
    assert main(["models", "add", str(artifact), "--version", "pca-small-v0.2.0", "--report", str(weak),
                 "--home", home]) == 0
    assert main(["models", "promote", "pca-small-v0.1.0", "--home", home]) == 0
    assert main(["models", "promote", "pca-small-v0.2.0", "--home", home]) == 2
    assert "validation gate refuses pca-small-v0.2.0: fnr_at_fpr5 = 0.2" in capsys.readouterr().err
    assert main(["models", "promote", "pca-small-v0.2.0", "--force", "--home", home]) == 0
    assert main(["models", "rollback", "--home", home]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "serving pca-small-v0.1.0"
    assert main(["models", "list", "--home", home]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("* pca-small-v0.1.0") and listing[1].startswith("  pca-small-v0.2.0")
    with pytest.raises(SystemExit):
        main(["models", "promote"])


def _rewired(artifact, folder, node) -> str:
    """A copy of ``artifact`` whose ``score`` output goes through ``node`` (given the original score's new
    name, returns the ONNX node making ``score``): metadata, inputs and output names as a valid model's."""
    import onnx

    model = onnx.load(str(artifact))
    graph = model.graph
    for n in graph.node:
        n.output[:] = ["score_raw" if o == "score" else o for o in n.output]
    graph.node.extend(node("score_raw"))
    [out] = [o for o in graph.output if o.name == "score"]
    out.type.tensor_type.ClearField("shape")
    path = folder / f"{len(list(folder.iterdir()))}.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_a_graph_that_cannot_serve_is_refused_at_registration(app_client, second_model, tmp_path):
    """A graph that fails when it runs, whose outputs do not fit the service (here a score per image of
    shape [1] instead of a number), or that scores images NaN, is refused with 422 before it can be promoted,
    and leaves no file."""
    import onnx
    from onnx import helper

    client, app = app_client
    artifact, report = second_model
    shape = helper.make_tensor("shape", onnx.TensorProto.INT64, [3], [-1, 7, 7])
    failing = _rewired(artifact, tmp_path, lambda raw: [
        helper.make_node("Constant", [], ["shape"], value=shape), helper.make_node("Reshape", [raw, "shape"], ["score"])])
    axes = helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [1])
    wrong_shape = _rewired(artifact, tmp_path, lambda raw: [
        helper.make_node("Constant", [], ["axes"], value=axes), helper.make_node("Unsqueeze", [raw, "axes"], ["score"])])
    nan = helper.make_tensor("nan", onnx.TensorProto.FLOAT, [], [float("nan")])
    not_a_number = _rewired(artifact, tmp_path, lambda raw: [
        helper.make_node("Constant", [], ["nan"], value=nan), helper.make_node("Mul", [raw, "nan"], ["score"])])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path, version, expected in ((failing, "broken-v1.0.0", "warm-up run failed"),
                                    (wrong_shape, "broken-v1.0.1", "score [2, 1]"),
                                    (not_a_number, "broken-v1.0.2", "not finite numbers")):
        with open(path, "rb") as f:
            response = client.post("/api/v1/models", headers=auth, data={"version": version, "report": json.dumps(report)},
                                   files={"artifact": ("m.onnx", f, "application/octet-stream")})
        assert response.status_code == 422, response.text
        assert expected in response.json()["detail"], response.json()
        assert not (app.state.service.settings.home / "models" / f"{version}.onnx").exists()
        assert client.post(f"/api/v1/models/{version}/promote", headers=auth).status_code == 404
    assert client.get("/readyz").json()["model_version"] == DEFAULT


@pytest.mark.parametrize("report, expected", [
    ('{"auroc": 1' + "0" * 400 + ', "auprc": 0.99, "fnr_at_fpr5": 0, "latency_ms_p50": 1}', "auroc missing or not a finite"),
    ('{"auroc": ' + "1" * 5000 + "}", "report: not JSON (Exceeds the limit"),
    ("[" * 100_000 + "]" * 100_000, "report: not JSON"),
    ('{"auroc": 0.9, "auprc": 0.9, "fnr_at_fpr5": 0, "latency_ms_p50": 1, "x": "\\ud800"}', "not storable as JSON"),
    ('{"auroc": 0.9, "auprc": 0.9, "fnr_at_fpr5": 0, "latency_ms_p50": 1, "x": NaN}', "not storable as JSON"),
    ('{"auroc": 0.9, "auprc": 0.9, "fnr_at_fpr5": 0, "latency_ms_p50": 1, "x": ' + "[" * 300 + "]" * 300 + "}",
     "nested more than 32 deep"),
    ('{"auroc": 2, "auprc": 2, "fnr_at_fpr5": -1, "latency_ms_p50": -5}', "auroc, auprc, fnr_at_fpr5, latency_ms_p50 out"),
])
def test_crafted_report_numbers_are_refused(client, second_model, report, expected):
    """An integer too large for a float, one past Python's digit limit, JSON nested deeper than the parser's
    recursion or than an answer can carry, text that is not Unicode, NaN, metrics out of range: 422 before
    anything is stored, not a 500 (and the model list still answers)."""
    artifact, _ = second_model
    with open(artifact, "rb") as f:
        response = client.post("/api/v1/models", headers={"Authorization": f"Bearer {TOKEN}"},
                               data={"version": "crafted-v1.0.0", "report": report},
                               files={"artifact": ("m.onnx", f, "application/octet-stream")})
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    assert [m["version"] for m in client.get("/api/v1/models").json()] == [DEFAULT]


def test_a_version_with_a_final_newline_is_refused(client, second_model):
    artifact, report = second_model
    with open(artifact, "rb") as f:
        response = client.post("/api/v1/models", headers={"Authorization": f"Bearer {TOKEN}"},
                               data={"version": "nl-v1.0.0\n", "report": json.dumps(report)},
                               files={"artifact": ("m.onnx", f, "application/octet-stream")})
    assert response.status_code == 422 and "must look like" in response.json()["detail"], response.text


def test_refusals_name_the_artifact_field_not_a_server_path(client):
    """The registry's message about an uploaded file names the form field, not the server's temporary copy."""
    response = client.post("/api/v1/models", headers={"Authorization": f"Bearer {TOKEN}"},
                           data={"version": "junk-v1.0.0", "report": json.dumps({"auroc": 1, "auprc": 1,
                                                                                  "fnr_at_fpr5": 0, "latency_ms_p50": 1})},
                           files={"artifact": ("m.onnx", b"not an onnx file", "application/octet-stream")})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("artifact") and "upload.onnx" not in detail and "/" not in detail.split(":")[0], detail
