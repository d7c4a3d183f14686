"""``fabguard anomaly retrain`` end to end: a service inspects synthetic wafers, inspectors label them, the
command trains, evaluates, registers the candidate and starts its shadow, which the running service follows;
and every refusal leaves the registry as it was."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fabguard.anomaly.synthetic import synthetic_set
from fabguard.cli import main
from fabguard.serve import db, review
from fabguard.serve.app import follow
from fabguard.serve.bundle import SOURCE, VERSION
from fabguard.serve.registry import REPORT_KEYS

from tests.serve.conftest import TOKEN, png_bytes

N_NORMAL, N_DEFECT, SIZE = 80, 16, SOURCE  # drawn at the size the bundled model was fitted on
UNLABELLED = 10  # PASS images of normal wafers left without a label (for --unreviewed)
SERVING = VERSION  # the bundled model serves; the candidates are PCA (fast to train) named after it
CANDIDATE, THIRD = (f"{SERVING.rsplit('.', 1)[0]}.{patch}" for patch in (1, 2))
ARGS = ["--since", "1d", "--model", "pca", "--components", "8", "--size", "32", "--min-images", "20", "--quiet",
        "--val-fraction", "0.3", "--review-quantile", "0.9"]  # 15 validation images: more than a 0.9 quantile needs


@pytest.fixture
def settings(tmp_path):
    """conftest's settings with every decision queued for review and every REVIEW wanting two labels."""
    from fabguard.serve.config import load_settings

    return load_settings(home=tmp_path / "home", token=TOKEN, max_wait_ms=1.0, sync_seconds=0.1,
                         audit_pass_rate=1.0, audit_reject_rate=1.0, second_label_rate=1.0)


def inspect(client, gray, k: int) -> dict:
    r = client.post(f"/api/v1/inspect?wafer_id=WF-{k // 8}&inspection_point={k % 8}", content=png_bytes(gray),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def line(app_client):
    """The service after a shift: 80 normal and 16 defective wafers inspected and labelled by the truth,
    except ``UNLABELLED`` PASS images and one PASS image the two inspectors disagree on; the log moved 10
    minutes back (unlabelled images younger than a minute are left out). Returns the client, the service,
    {inspection id: (decision, truth)} and the expected (train, test normal, test defective) counts."""
    client, app = app_client
    service = app.state.service
    images = synthetic_set(N_NORMAL, N_DEFECT, SIZE, seed=5)
    truth = {}
    for k, (image, label) in enumerate(zip(images.images, images.labels)):
        answer = inspect(client, image[0], k)
        truth[answer["inspection_id"]] = (answer["decision"], int(label))
    service.after.submit(lambda: None).result()  # one worker, in order: every stored image is written
    normal_passes = [i for i, (d, y) in truth.items() if d == "PASS" and y == 0]
    assert len(normal_passes) >= 50, "the bundled model should PASS most synthetic normal wafers"
    unlabelled, disputed = set(normal_passes[:UNLABELLED]), normal_passes[UNLABELLED]
    with service.engine.begin() as c:
        c.execute(db.review_items.update().where(db.review_items.c.inspection_id == disputed)
                  .values(labels_wanted=2))  # as if sampled for a second label
        for iid, (decision, y) in truth.items():
            if iid in unlabelled:
                continue
            answers = ["normal", "defective"] if iid == disputed else ["defective" if y else "normal"] * (
                2 if decision == "REVIEW" else 1)
            for inspector, answer in zip(("ann", "bob"), answers):
                review.record_label(c, iid, inspector, answer, "scratch" if answer == "defective" else None)
        for iid, at in c.execute(sa.select(db.inspections.c.id, db.inspections.c.created_at)).all():
            c.execute(db.inspections.update().where(db.inspections.c.id == iid)
                      .values(created_at=db.utc(at) - timedelta(minutes=10)))
    confirmed = len(normal_passes) - UNLABELLED - 1
    held = round(0.2 * confirmed)
    labelled_others = sum(1 for d, y in truth.values() if d != "PASS" or y == 1)
    expected = (confirmed - held, held + labelled_others - N_DEFECT, N_DEFECT)
    return client, service, truth, expected


def versions(service) -> list[str]:
    return [m["version"] for m in service.registry.list()]


def test_retrain_registers_the_candidate_and_starts_its_shadow(line, capsys):
    client, service, _, expected = line
    home = ["--home", str(service.settings.home)]
    assert main(["anomaly", "retrain", *home, *ARGS, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["version"], summary["baseline"]) == (CANDIDATE, SERVING)
    report = service.registry.get(CANDIDATE)["report"]
    assert report == summary["report"]
    data = report["data"]
    assert (data["train"], data["test_normal"], data["test_defective"]) == expected
    assert data["sources"]["PASS"]["disputed"] == 1 and data["sources"]["unreviewed_pass"] == 0
    assert all(isinstance(report[k], float) and math.isfinite(report[k]) for k in REPORT_KEYS)
    assert report["latency_ms_p50"] > 0 and report["model"] == "pca" and report["input_size"] == 32
    # measured: AUROC 1.0 on these synthetic wafers (scratches and particles are far from the die pattern)
    assert report["auroc"] > 0.95 and set(report["baseline"]) >= {"version", "auroc", "auprc", "fnr_at_fpr5"}
    assert report["detection_rate_by_type"]["scratch"]["n"] == N_DEFECT
    model = service.registry.load(CANDIDATE).inspector
    assert model.metadata["n_train"] + model.metadata["n_val"] == data["train"]  # trained on these images only
    with service.engine.connect() as c:
        runs = c.execute(sa.select(db.experiments)).mappings().all()
        started = c.execute(sa.select(db.events.c.kind).where(db.events.c.version == CANDIDATE)).scalars().all()
    assert [(r["id"], r["candidate"], r["baseline"], r["mode"], r["status"]) for r in runs] == [
        (summary["experiment"], CANDIDATE, SERVING, "shadow", "running")]
    assert started == ["shadow_started"]

    follow(service)  # what the service does every sync_seconds: it now scores beside production
    assert service.experiments.running.candidate.version == CANDIDATE
    answer = inspect(client, synthetic_set(1, 0, SIZE, seed=9).images[0, 0], 0)
    assert answer["model_version"] == SERVING  # production decides
    service.after.submit(lambda: None).result()
    with service.engine.connect() as c:
        shadow = c.execute(sa.select(db.shadow_scores.c.version).where(
            db.shadow_scores.c.inspection_id == answer["inspection_id"])).scalars().all()
    assert shadow == [CANDIDATE]

    assert main(["anomaly", "retrain", *home, *ARGS]) == 2  # another shadow cannot start beside it
    assert f"experiment {summary['experiment']} (shadow of {CANDIDATE}) is running" in capsys.readouterr().err
    assert main(["anomaly", "retrain", *home, *ARGS, "--no-shadow", "--unreviewed"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"registered {THIRD} (pca): trained on ") and "no shadow phase started" in out
    data = service.registry.get(THIRD)["report"]["data"]
    assert data["sources"]["unreviewed_pass"] == UNLABELLED  # the fresh image above is left out
    assert (data["train"], data["test_normal"], data["test_defective"]) == (expected[0] + UNLABELLED, *expected[1:])


def test_refusals_leave_the_registry_as_it_was(line, capsys, tmp_path, monkeypatch):
    _, service, truth, expected = line
    home = service.settings.home
    before = versions(service)

    def refused(args, *needles):
        assert main(["anomaly", "retrain", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fabguard: error: ") and "Traceback" not in err
        for needle in needles:
            assert needle in err
        assert versions(service) == before
        assert sorted(p.name for p in (home / "models").iterdir()) == [f"{SERVING}.onnx"]
        return err

    h = ["--home", str(home)]
    refused(["--home", str(tmp_path / "nowhere"), *ARGS], "does not exist")
    (tmp_path / "bare" / "images").mkdir(parents=True)
    refused(["--home", str(tmp_path / "bare"), *ARGS], "no inspection log in", "no fabguard.db")
    refused([*h, *ARGS, "--since", "tomorrow"], "--since 'tomorrow'")
    refused([*h, *ARGS, "--since", "2999-01-01"], "not in the past")
    refused([*h, *ARGS, "--version", SERVING], f"{SERVING} is already registered")
    refused([*h, *ARGS, "--version", "Candidate-1"], "must look like")
    refused([*h, *ARGS, "--epochs", "2"], "--epochs is an option of")  # another detector's flag
    err = refused([*h, *ARGS, "--min-images", "1000"], f"too few training images: {expected[0]} ")
    assert f"PASS: {sum(d == 'PASS' for d, _ in truth.values())} inspections" in err  # where they came from
    refused([*h, *ARGS, "--components", "500"], "500 components")  # refused in training, after reading images

    labelled = [i for i, (d, y) in truth.items() if y == 1]
    gone, damaged = home / "images" / f"{labelled[0]}.png", home / "images" / f"{labelled[1]}.png"
    kept = gone.read_bytes()
    gone.unlink()
    refused([*h, *ARGS], "1 image file(s) of the log are missing", f"images/{labelled[0]}.png")
    gone.write_bytes(kept)
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    refused([*h, *ARGS], "1 stored image(s) cannot be read", str(damaged))
    damaged.write_bytes(kept)

    from fabguard.serve.experiments import Experiments
    from fabguard.serve.registry import Conflict

    def taken(self, candidate, mode, share=None):
        raise Conflict("experiment 7 (canary of other-v1.0.0) is running; stop it first")

    monkeypatch.setattr(Experiments, "start", taken)  # another experiment started while this one trained
    refused([*h, *ARGS], f"the shadow phase of {CANDIDATE} could not start", "withdrawn")


def test_since_and_next_version():
    from datetime import datetime, timezone

    from fabguard.errors import InputError
    from fabguard.serve.retrain import next_version, parse_since, verdict

    now = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
    assert parse_since("90d", now) == now - timedelta(days=90)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("2026-01-31", now) == datetime(2026, 1, 31, tzinfo=timezone.utc)
    assert parse_since("2026-03-01T09:00:00+01:00", now) == datetime(2026, 3, 1, 8, tzinfo=timezone.utc)
    for bad in ("0d", "3w", "-1d", "2026-03-02T08:00:00+00:00"):
        with pytest.raises(InputError, match="--since"):
            parse_since(bad, now)
    registered = ["vae-wafer-v2.3.1", "vae-wafer-v2.3.4", "vae-wafer-v2.4.9", "pca-wafer-v2.3.7"]
    assert next_version(registered, "vae-wafer-v2.3.1") == "vae-wafer-v2.3.5"  # past every registered patch
    assert next_version(["vae-wafer-v2.3.1"], "vae-wafer-v2.3.1") == "vae-wafer-v2.3.2"
    with pytest.raises(InputError, match="no patch number left"):
        next_version(["a-v1.0.9999"], "a-v1.0.9999")
    assert [verdict(n, k) for n, k in ((1, 0), (2, 2), (2, 1))] == ["normal", "defective", "disputed"]
