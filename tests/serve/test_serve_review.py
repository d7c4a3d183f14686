"""Human review: the queue and its audit sample, label checks over HTTP (4xx JSON, never 500), the
estimators (hand-computed figures, interval coverage by simulation), the figures API and the gauges."""

from __future__ import annotations

import io
import math
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import sqlalchemy as sa
import tifffile
from PIL import Image

from fabguard.serve import db, review
from fabguard.serve.bundle import VERSION
from fabguard.serve.config import load_settings
from tests.serve.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)


def row(decision: str, at: datetime = T0, version: str = VERSION, arm: str = "production") -> dict:
    iid = uuid.uuid4().hex
    return {"id": iid, "created_at": at, "wafer_id": "WF-1", "inspection_point": 1, "model_version": version,
            "anomaly_score": 0.01, "decision": decision, "confidence": 0.9, "inference_time_ms": 1.0,
            "image_ref": None, "heatmap_ref": f"heatmaps/WF-1-1-{iid[:12]}.png", "arm": arm}


def insert(engine, rows: list[dict], queued: dict | None = None) -> None:
    """Log ``rows``; queue those in ``queued`` (id -> (reason, labels wanted)) as given."""
    with engine.begin() as c:
        c.execute(db.inspections.insert(), rows)
        for iid, (reason, wanted) in (queued or {}).items():
            c.execute(db.review_items.insert().values(inspection_id=iid, reason=reason, labels_wanted=wanted,
                                                      created_at=T0))


def label(engine, iid: str, inspector: str, answer: str, defect_type: str | None = None) -> dict:
    with engine.begin() as c:
        return review.record_label(c, iid, inspector, answer, defect_type)


@pytest.fixture
def engine(tmp_path):
    engine = db.create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    db.migrate(engine)
    yield engine
    engine.dispose()


# --- the queue -------------------------------------------------------------------------------------------

def test_audit_sample_is_reproducible_and_at_the_configured_rates():
    settings = load_settings(home="unused", audit_pass_rate=0.1, audit_reject_rate=0.3, second_label_rate=0.2)
    rng = np.random.default_rng(0)
    ids = [uuid.UUID(bytes=rng.bytes(16)).hex for _ in range(20_000)]
    n = len(ids)
    for decision, reason, rate in (("PASS", "audit", 0.1), ("REJECT", "audit", 0.3)):
        plans = [review.plan(i, decision, settings) for i in ids]
        share = sum(p is not None for p in plans) / n
        # a hash-uniform sample: share ~ Binomial(n, rate) / n, sd sqrt(rate (1 - rate) / n) <= 0.0033; 4 sd
        assert abs(share - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
        assert {p for p in plans if p} == {(reason, 1)}
        assert plans == [review.plan(i, decision, settings) for i in ids]  # reproducible
    reviewed = [review.plan(i, "REVIEW", settings) for i in ids]
    assert all(p and p[0] == "review" for p in reviewed)  # every REVIEW is queued
    second = sum(p[1] == 2 for p in reviewed) / n
    assert abs(second - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    # another seed draws another sample: the two overlap like independent samples (rate^2 = 0.01 of ids)
    other = load_settings(home="unused", audit_pass_rate=0.1, review_seed=1)
    both = sum(bool(review.plan(i, "PASS", settings)) and bool(review.plan(i, "PASS", other)) for i in ids) / n
    assert abs(both - 0.01) < 4 * math.sqrt(0.01 * 0.99 / n)
    none = load_settings(home="unused", audit_pass_rate=0.0, audit_reject_rate=1.0)
    assert not any(review.plan(i, "PASS", none) for i in ids[:500])
    assert all(review.plan(i, "REJECT", none) for i in ids[:500])
    with pytest.raises(ValueError, match="MAYBE"):
        review.plan(ids[0], "MAYBE", settings)


def test_queue_for_review_in_the_inspection_transaction(engine):
    settings = load_settings(home="unused", audit_pass_rate=1.0, audit_reject_rate=0.0, second_label_rate=1.0)
    rows = [row("PASS"), row("REVIEW"), row("REJECT")]
    with engine.begin() as c:
        for r in rows:
            c.execute(db.inspections.insert().values(**r))
            review.queue_for_review(c, r, settings)
    with engine.connect() as c:
        queued = {r.inspection_id: (r.reason, r.labels_wanted) for r in c.execute(sa.select(db.review_items))}
    assert queued == {rows[0]["id"]: ("audit", 1), rows[1]["id"]: ("review", 2)}
    rolled_back = row("REVIEW")
    with pytest.raises(RuntimeError), engine.begin() as c:  # the inspection and its item commit together
        c.execute(db.inspections.insert().values(**rolled_back))
        review.queue_for_review(c, rolled_back, settings)
        raise RuntimeError("the commit fails")
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(db.review_items)).scalar_one() == 2


def test_next_items_review_first_then_oldest_skipping_what_the_inspector_did(engine):
    old = row("PASS", T0)
    rev_new, rev_old = row("REVIEW", T0 + timedelta(minutes=2)), row("REVIEW", T0 + timedelta(minutes=1))
    double = row("REVIEW", T0 + timedelta(minutes=3))
    insert(engine, [old, rev_new, rev_old, double])
    with engine.begin() as c:  # queued_at is the inspection's time
        for r, (reason, wanted) in ((old, ("audit", 1)), (rev_new, ("review", 1)), (rev_old, ("review", 1)),
                                    (double, ("review", 2))):
            c.execute(db.review_items.insert().values(inspection_id=r["id"], reason=reason, labels_wanted=wanted,
                                                      created_at=r["created_at"]))

    def order(inspector):
        with engine.connect() as c:
            return [i["inspection_id"] for i in review.next_items(c, inspector, 10)]
    assert order("ann") == [rev_old["id"], rev_new["id"], double["id"], old["id"]]
    label(engine, double["id"], "ann", "normal")
    label(engine, rev_old["id"], "ann", "defective", "scratch")
    assert order("ann") == [rev_new["id"], old["id"]]  # her own labels are skipped
    assert order("bob") == [rev_new["id"], double["id"], old["id"]]  # the double item wants his label
    label(engine, double["id"], "bob", "defective")
    assert order("cy") == [rev_new["id"], old["id"]]
    with engine.connect() as c:
        assert review.waiting(c) == 2


# --- labels over HTTP ------------------------------------------------------------------------------------

@pytest.fixture
def review_app(tmp_path):
    from fastapi.testclient import TestClient

    from fabguard.serve.app import create_app

    settings = load_settings(home=tmp_path / "home", token=TOKEN, review_token="inspectors-only",
                             max_wait_ms=1.0, sync_seconds=0.1)
    with TestClient(create_app(settings)) as client:
        yield client, client.app.state.service


def test_label_checks_answer_4xx_json(review_app):
    client, service = review_app
    queued, double, passed = row("REVIEW"), row("REVIEW"), row("PASS")
    insert(service.engine, [queued, double, passed], {queued["id"]: ("review", 1), double["id"]: ("review", 2)})

    def post(iid, body, headers=AUTH):
        return client.post(f"/api/v1/review/items/{iid}/labels", json=body, headers=headers)
    good = {"inspector": "ann", "label": "defective", "defect_type": "scratch"}
    refusals = [
        (post(queued["id"], good, {}), 401, "bearer token is required"),
        (post(queued["id"], good, {"Authorization": "Bearer nope"}), 401, "wrong bearer token"),
        (post(uuid.uuid4().hex, good), 404, "no inspection"),
        (post(passed["id"], good), 409, "not in the review queue"),
        (post("not-an-id", good), 422, "pattern"),
        (post(queued["id"], {**good, "label": "maybe"}), 422, "normal"),
        (post(queued["id"], {"inspector": "ann", "label": "normal", "defect_type": "scratch"}), 422,
         "only given with the label 'defective'"),
        (post(queued["id"], {**good, "defect_type": "dust bunny"}), 422, "one of scratch"),
        (post(queued["id"], {**good, "inspector": "../etc"}), 422, "pattern"),
        (post(queued["id"], {**good, "inspector": "ann "}), 422, "pattern"),
        (post(queued["id"], {**good, "extra": 1}), 422, "extra"),
    ]
    for answer, status, text in refusals:
        assert answer.status_code == status and text in str(answer.json()["detail"]), (status, answer.text)
    first = post(queued["id"], good, {"Authorization": "Bearer inspectors-only"})  # the review token may label
    assert first.status_code == 201
    assert first.json() | {"created_at": None} == {
        "id": first.json()["id"], "inspection_id": queued["id"], "inspector": "ann", "label": "defective",
        "defect_type": "scratch", "created_at": None, "labels": 1, "labels_wanted": 1}
    again = post(queued["id"], {**good, "label": "normal", "defect_type": None})
    assert again.status_code == 409 and "already labelled" in again.json()["detail"]
    full = post(queued["id"], {**good, "inspector": "bob"})
    assert full.status_code == 409 and "already has the 1 label(s)" in full.json()["detail"]
    assert post(double["id"], good).status_code == 201
    assert post(double["id"], {"inspector": "bob", "label": "normal"}).json()["labels"] == 2
    # the review token labels, nothing else
    promote = client.post(f"/api/v1/models/{VERSION}/promote",
                          headers={"Authorization": "Bearer inspectors-only"})
    assert promote.status_code == 401
    with service.engine.connect() as c:
        stored = c.execute(sa.select(db.reviews.c.inspection_id, db.reviews.c.inspector, db.reviews.c.label)
                           .order_by(db.reviews.c.id)).all()
    assert [tuple(s) for s in stored] == [(queued["id"], "ann", "defective"), (double["id"], "ann", "defective"),
                                          (double["id"], "bob", "normal")]


def test_queue_api_and_stored_images(review_app, wafer_images):
    client, service = review_app
    images = wafer_images[0]
    answers = []
    for i, im in enumerate(images[:2]):
        r = client.post(f"/api/v1/inspect?wafer_id=WF-7&inspection_point={i}", content=im,
                        headers={"Content-Type": "image/png"})
        answers.append(r.json())
    gray = np.asarray(Image.open(io.BytesIO(images[0])))
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, gray)
    answers.append(client.post("/api/v1/inspect?wafer_id=WF-7&inspection_point=9", content=tiff.getvalue(),
                               headers={"Content-Type": "image/tiff"}).json())
    with service.engine.begin() as c:  # queue them whatever the decision and the audit rates
        rows = c.execute(sa.select(db.inspections)).mappings().all()
        already = set(c.execute(sa.select(db.review_items.c.inspection_id)).scalars())
        for r in rows:
            if r["id"] not in already:
                c.execute(db.review_items.insert().values(inspection_id=r["id"], reason="audit", labels_wanted=1,
                                                          created_at=r["created_at"]))
    body = client.get("/api/v1/review/queue", params={"inspector": "ann"}).json()
    assert body["waiting"] == 3 and body["defect_types"] == service.settings.review_defect_types
    by_id = {item["inspection_id"]: item for item in body["items"]}
    assert set(by_id) == {a["inspection_id"] for a in answers}
    for a in answers:
        item = by_id[a["inspection_id"]]
        assert (item["decision"], item["anomaly_score"], item["model_version"], item["heatmap_url"]) == (
            a["decision"], a["anomaly_score"], a["model_version"], a["heatmap_url"])
    deadline = time.monotonic() + 10  # images are stored after the answer
    while client.get(by_id[answers[2]["inspection_id"]]["image_url"]).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    png = client.get(by_id[answers[0]["inspection_id"]]["image_url"])
    assert png.headers["content-type"] == "image/png" and png.content == images[0]  # stored bytes as they came
    converted = Image.open(io.BytesIO(client.get(by_id[answers[2]["inspection_id"]]["image_url"]).content))
    assert converted.format == "PNG" and np.array_equal(np.asarray(converted)[..., 0], gray)
    missing = client.get(f"/api/v1/review/items/{uuid.uuid4().hex}/image.png")
    assert missing.status_code == 404 and "no inspection" in missing.json()["detail"]
    assert client.get("/api/v1/review/queue", params={"inspector": ""}).status_code == 422
    page = client.get("/review")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    assert "review.js" in page.text and client.get("/review/review.js").status_code == 200
    assert client.get("/review/other.js").status_code == 404


# --- estimators ------------------------------------------------------------------------------------------

def test_figures_by_hand(engine):
    """100 PASS (10 audited, 1 defective), 20 REVIEW (all labelled, 12 defective, one of them by only one of
    two inspectors), 30 REJECT (10 audited, 8 defective). Each audited PASS stands for 10, each audited
    REJECT for 3."""
    passes, reviews_, rejects = ([row(d) for _ in range(k)] for d, k in (("PASS", 100), ("REVIEW", 20),
                                                                       ("REJECT", 30)))
    queued = {r["id"]: ("audit", 1) for r in passes[:10] + rejects[:10]}
    queued |= {r["id"]: ("review", 2 if k == 0 else 1) for k, r in enumerate(reviews_)}
    insert(engine, passes + reviews_ + rejects, queued)
    label(engine, passes[0]["id"], "ann", "defective", "crack")
    for r in passes[1:10]:
        label(engine, r["id"], "ann", "normal")
    label(engine, reviews_[0]["id"], "ann", "defective")  # 1/2: the two inspectors disagree
    label(engine, reviews_[0]["id"], "bob", "normal")
    for k, r in enumerate(reviews_[1:], 1):
        label(engine, r["id"], "ann", "defective" if k <= 11 else "normal")  # 11 + 1/2 defective
    for k, r in enumerate(rejects[:10]):
        label(engine, r["id"], "ann", "defective" if k < 8 else "normal")
    with engine.connect() as c:
        # labels taken as given (prior_error=0): the figures below are worked out by hand without correction
        found = review.estimate(c, None, T0 - timedelta(hours=1), T0 + timedelta(hours=1), prior_error=0.0)
        later = review.estimate(c, None, T0 + timedelta(seconds=1), T0 + timedelta(hours=1), prior_error=0.0)
    missed, flagged = 100 * 1 / 10, 11.5 + 30 * 8 / 10
    normal = 100 * 9 / 10 + 8.5 + 30 * 2 / 10
    assert found.fnr == pytest.approx(missed / (missed + flagged), rel=1e-12)  # 10 / 45.5
    assert found.fpr == pytest.approx(30 * 2 / 10 / normal, rel=1e-12)  # 6 / 104.5
    assert found.reject_override == pytest.approx(0.2, rel=1e-12)
    assert (found.agreement, found.agreement_items) == (0.0, 1)
    assert (found.inspections, found.labelled) == (150, 40)
    for name in ("fnr", "fpr", "reject_override"):
        low, value, high = (getattr(found, name + s) for s in ("_low", "", "_high"))
        assert 0 <= low < value < high <= 1, name
    assert later.inspections == 0 and later.fnr is None and later.notes  # the window is the inspection time


def test_figures_of_a_shadow_candidate_and_an_arm(engine):
    """The candidate's decisions are judged on the same labels with the same weights."""
    passes = [row("PASS") for _ in range(40)]
    rejects = [row("REJECT") for _ in range(10)]
    canary = [row("PASS", version="pca-small-v0.1.0", arm="canary") for _ in range(5)]
    insert(engine, passes + rejects + canary, {r["id"]: ("audit", 1) for r in passes[:4] + rejects[:5] + canary})
    for r in passes[:4]:
        label(engine, r["id"], "ann", "normal")
    for k, r in enumerate(rejects[:5]):
        label(engine, r["id"], "ann", "defective" if k < 4 else "normal")
    for k, r in enumerate(canary):
        label(engine, r["id"], "ann", "defective" if k == 0 else "normal")
    with engine.begin() as c:  # the candidate PASSes every image: it misses every defect
        c.execute(db.shadow_scores.insert(), [{"inspection_id": r["id"], "version": "pca-small-v0.1.0",
                                               "anomaly_score": 0.0, "decision": "PASS", "inference_time_ms": 1.0}
                                              for r in passes + rejects])
    window = T0 - timedelta(hours=1), T0 + timedelta(hours=1)
    with engine.connect() as c:
        production = review.estimate(c, VERSION, *window, prior_error=0.0)
        candidate = review.estimate(c, "pca-small-v0.1.0", *window, prior_error=0.0)
        canary_arm = review.estimate(c, "pca-small-v0.1.0", *window, arm="canary", prior_error=0.0)
    assert production.fnr == 0 and production.fnr_low == 0 and production.fnr_high > 0
    assert production.reject_override == pytest.approx(0.2, rel=1e-12)
    # 40 shadowed PASS (all normal), 10 shadowed REJECT (8 defective), 5 canary PASS (1 defective): all PASSed
    assert (candidate.fnr_low, candidate.fnr, candidate.fnr_high) == (1, 1, 1)  # 1 whatever the unlabelled are
    assert candidate.fpr == 0 and candidate.reject_override is None  # it REJECTed nothing
    assert candidate.inspections == 55 and canary_arm.inspections == 5 and canary_arm.fnr == 1


def test_not_estimable_says_why_and_bad_windows_are_refused(engine):
    rows = [row("PASS") for _ in range(5)] + [row("REJECT") for _ in range(2)]
    insert(engine, rows, {rows[-1]["id"]: ("audit", 1)})
    label(engine, rows[-1]["id"], "ann", "normal")
    with engine.connect() as c:
        found = review.estimate(c, None, T0 - timedelta(hours=1), T0 + timedelta(hours=1))
        assert found.fnr is None and found.fpr is None and found.reject_override == 1.0
        assert any(n.startswith("fnr:") for n in found.notes) and any("agreement" in n for n in found.notes)
        with pytest.raises(review.InputError, match="until"):
            review.estimate(c, None, T0, T0)


def simulate(rng, size: int, prevalence: float, defective: tuple, normal: tuple, audit: tuple,
             candidate: tuple | None = None):
    """A window's Cells and its true rates: images defective with ``prevalence``, decided PASS / REVIEW /
    REJECT with the given probabilities, labelled with the audit rate of their logged decision; a candidate
    (when given) decides 30% of the images its own way."""
    truth = rng.random(size) < prevalence

    def decide(p_defective, p_normal):
        p = np.where(truth[:, None], np.array(p_defective)[None], np.array(p_normal)[None])
        return (rng.random(size)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    logged = decide(defective, normal)
    judged = logged if candidate is None else np.where(rng.random(size) < 0.3, decide(*candidate), logged)
    labelled = rng.random(size) < np.array(audit)[logged]
    grid = [np.zeros((3, 3)) for _ in range(3)]
    for g, w in zip(grid, (np.ones(size), labelled, labelled & truth)):
        np.add.at(g, (logged, judged), w)
    rates = {"fnr": np.sum(truth & (judged == 0)) / truth.sum(),
             "fpr": np.sum(~truth & (judged == 2)) / np.sum(~truth),
             "override": np.sum(~truth & (judged == 2)) / max(np.sum(judged == 2), 1)}
    return review.Cells(*grid), rates


REGIMES = {  # (kwargs, whether coverage may also be checked from above: not at a 0-count boundary)
    "production, few audited PASS": (dict(size=5000, prevalence=0.04, defective=(0.05, 0.25, 0.7),
                                         normal=(0.93, 0.05, 0.02), audit=(0.05, 1.0, 0.2)), False),
    "shadow candidate": (dict(size=5000, prevalence=0.05, defective=(0.1, 0.3, 0.6), normal=(0.9, 0.07, 0.03),
                              audit=(0.2, 0.8, 0.4), candidate=((0.25, 0.25, 0.5), (0.95, 0.03, 0.02))), True),
}


@pytest.mark.parametrize("regime", REGIMES)
def test_intervals_cover_the_true_rates(regime):
    """Coverage of the 95% intervals over 600 seeded windows. A correct interval's coverage estimate is
    Binomial(600, 0.95) / 600, sd sqrt(0.95 * 0.05 / 600) = 0.0089: below 0.95 - 3 sd = 0.923 happens by
    chance with probability 0.1%. Where no rate sits at a 0-count boundary, coverage above 0.95 + 5 sd
    (0.995) would mean intervals too wide to be useful."""
    kwargs, two_sided = REGIMES[regime]
    rng, reps, sd = np.random.default_rng(7), 600, math.sqrt(0.95 * 0.05 / 600)
    hits = {"fnr": [], "fpr": [], "override": []}
    for rep in range(reps):
        cells, truth = simulate(rng, **kwargs)
        for name, found in review.rates(cells, draws=1000, seed=rep).items():
            assert found.value is not None
            hits[name].append(found.low <= truth[name] <= found.high)
    for name, h in hits.items():
        coverage = np.mean(h)
        assert coverage >= 0.95 - 3 * sd, (name, coverage)
        if two_sided:
            assert coverage <= 0.95 + 5 * sd, (name, coverage)


def test_rates_refuse_impossible_cells():
    size = np.full((3, 3), 5.0)
    with pytest.raises(ValueError, match="labelled"):
        review.rates(review.Cells(size, size + 1, np.zeros((3, 3))))


# --- figures API and gauges ------------------------------------------------------------------------------

def test_figures_api_and_gauges_refresh_off_the_request_path(tmp_path):
    from fastapi.testclient import TestClient

    from fabguard.serve.app import create_app

    settings = load_settings(home=tmp_path / "home", token=TOKEN, review_seconds=0.05, sync_seconds=0.1)
    now = datetime.now(timezone.utc)
    with TestClient(create_app(settings)) as client:
        engine = client.app.state.service.engine
        passes = [row("PASS", now - timedelta(hours=1)) for _ in range(20)]
        reviews_ = [row("REVIEW", now - timedelta(hours=1)) for _ in range(4)]
        rejects = [row("REJECT", now - timedelta(hours=1)) for _ in range(4)]
        stale = row("REVIEW", now - timedelta(days=2))
        insert(engine, passes + reviews_ + rejects + [stale],
               {r["id"]: ("audit", 1) for r in passes[:5] + rejects[:2]} |
               {r["id"]: ("review", 2) for r in reviews_ + [stale]})
        for r in passes[:5]:
            label(engine, r["id"], "ann", "normal")
        for k, r in enumerate(reviews_):
            label(engine, r["id"], "ann", "defective")
            label(engine, r["id"], "bob", "defective" if k < 3 else "normal")
        label(engine, rejects[0]["id"], "ann", "defective")
        label(engine, rejects[1]["id"], "ann", "normal")
        with engine.connect() as c:
            expected = review.estimate(c, None, now - timedelta(days=1), datetime.now(timezone.utc))
        assert expected.agreement == 0.75 and expected.reject_override == 0.5 and expected.fnr == 0
        deadline = time.monotonic() + 10

        def gauges():
            text = client.get("/metrics").text
            return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                    if line.startswith("fabguard_review_")}
        while gauges()["fabguard_review_labelled"] != 11:  # set by the lifespan's task, not by /metrics
            assert time.monotonic() < deadline, "review gauges never refreshed"
            time.sleep(0.05)
        seen = gauges()
        assert expected.labelled == 11  # inspections with a label (15 labels)
        assert seen["fabguard_review_agreement"] == 0.75 and seen["fabguard_review_agreement_items"] == 4
        assert seen["fabguard_review_reject_override"] == 0.5 and seen["fabguard_review_fnr"] == 0
        assert seen["fabguard_review_fpr"] == pytest.approx(expected.fpr, rel=1e-12)
        assert seen["fabguard_review_waiting"] == 1  # the stale item still wants two labels
        since = (now - timedelta(days=1)).isoformat()
        body = client.get("/api/v1/review/figures", params={"since": since}).json()
        assert (body["labelled"], body["agreement"], body["reject_override"], body["fpr"]) == (
            11, 0.75, 0.5, pytest.approx(expected.fpr, rel=1e-12))
        assert body["agreement_low"] < 0.75 < body["agreement_high"]
        older = client.get("/api/v1/review/figures", params={"since": (now - timedelta(days=3)).isoformat(),
                                                              "until": since}).json()
        assert older["inspections"] == 1 and older["fnr"] is None
        for params, text in (({"since": now.isoformat(), "until": since}, "must be after"),
                             ({"arm": "both"}, "pattern"), ({"since": "yesterday"}, "datetime")):
            answer = client.get("/api/v1/review/figures", params=params)
            assert answer.status_code == 422 and text in str(answer.json()["detail"]), answer.text


def test_label_error_from_agreement_and_the_correction_it_makes():
    """q from a = (1 - q)^2 + q^2; then normal REVIEW images that a candidate PASSes, 12.4% of them labelled
    defective by error, are no longer counted as its misses (exact arithmetic on the point estimate)."""
    assert review.label_error(100, 78) == pytest.approx((1 - np.sqrt(0.56)) / 2, abs=1e-15)
    assert review.label_error(9, 7) == review.PRIOR_LABEL_ERROR  # too few double-labelled items: the prior
    assert (1 - review.PRIOR_LABEL_ERROR) ** 2 + review.PRIOR_LABEL_ERROR ** 2 == pytest.approx(0.78, abs=0.005)
    assert review.label_error(40, 20) == 0.0  # chance-level agreement: nothing to correct with
    size, labelled, defective = np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((3, 3))
    size[1, 0] = labelled[1, 0] = 100  # production REVIEW, candidate PASS: all normal, 12.4 labelled defective
    defective[1, 0] = 12.4
    size[2, 2], labelled[2, 2], defective[2, 2] = 50, 10, 10  # production and candidate REJECT: defective
    size[0, 0], labelled[0, 0] = 1000, 50  # both PASS: audited, all normal
    cells = review.Cells(size, labelled, defective)
    raw = review.rates(cells, draws=200)["fnr"]
    assert raw.value == pytest.approx(12.4 / (12.4 + 50), rel=1e-12)
    fixed = review.rates(cells, draws=200, errors=(0.0, 0.124, 0.0))["fnr"]
    assert fixed.value == 0.0
    with pytest.raises(ValueError, match="label error"):
        review.rates(cells, errors=(0.0, 0.5, 0.0))


# --- concurrent labels -----------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def on_each_database(request, settings):
    """(base URL, engine) of a live server (uvicorn, real HTTP) on a SQLite file or on PostgreSQL."""
    from tests.serve.conftest import run_server

    if request.param == "postgresql":
        settings.db = request.getfixturevalue("postgres_url")
    url, stop = run_server(settings)
    engine = db.create_engine(settings.db_url)
    yield url, engine
    engine.dispose()
    stop()


def test_concurrent_labels_never_exceed_labels_wanted(on_each_database):
    """Eight inspectors label the same item at once: exactly ``labels_wanted`` of them get 201, the rest 409,
    and the log holds exactly that many labels (the count is checked and the label inserted atomically)."""
    import threading

    import httpx

    url, engine = on_each_database
    items = [row("REVIEW") for _ in range(6)]
    wanted = {r["id"]: 1 + k % 2 for k, r in enumerate(items)}
    insert(engine, items, {iid: ("review", w) for iid, w in wanted.items()})
    threads = 8

    def post(iid, k, start, answers):
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
            http.get("/healthz")  # connected before the barrier: the posts leave together
            start.wait()
            answers[k] = http.post(f"/api/v1/review/items/{iid}/labels",
                                   json={"inspector": f"insp{k}", "label": "normal"})
    for iid, want in wanted.items():
        start, answers = threading.Barrier(threads), [None] * threads
        workers = [threading.Thread(target=post, args=(iid, k, start, answers)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        codes = sorted(a.status_code for a in answers)
        assert codes == [201] * want + [409] * (threads - want), (iid, [a.text for a in answers])
        assert all("already has the" in a.json()["detail"] for a in answers if a.status_code == 409)
        assert sorted(a.json()["labels"] for a in answers if a.status_code == 201) == list(range(1, want + 1))
        with engine.connect() as c:
            stored = c.execute(sa.select(sa.func.count()).select_from(db.reviews)
                               .where(db.reviews.c.inspection_id == iid)).scalar_one()
        assert stored == want, iid


def test_figures_at_the_calendars_edge_answer_422_naming_the_parameter(on_each_database):
    """Times that UTC (or the default 24 h window, or the 30 days the label error is measured over) takes off
    the calendar are refused with a 422 naming the parameter, never a 500; windows at its edge are answered."""
    import httpx

    url, _ = on_each_database
    with httpx.Client(base_url=url, timeout=30) as http:
        for query, start in (("until=0001-01-01", "window: until (0001-01-01T00:00:00+00:00)"),  # 24 h before: none
                             ("since=0001-01-01T00:00:00%2B14:00", "since 0001-01-01T00:00:00+14:00: outside"),
                             ("since=9999-12-31T23:59:59-12:00", "since 9999-12-31T23:59:59-12:00: outside"),
                             ("until=9999-12-31T23:59:59-12:00", "until 9999-12-31T23:59:59-12:00: outside"),
                             ("until=0001-01-01T10:00:00%2B14:00", "until 0001-01-01T10:00:00+14:00: outside"),
                             ("since=9999-12-31T00:00:00Z", "window: until")):  # until (now) must be after since
            answer = http.get(f"/api/v1/review/figures?{query}")
            assert answer.status_code == 422 and answer.json()["detail"].startswith(start), (query, answer.text)
        for query, since, until in (  # the 24 h and 30 days before start at the calendar's first day at most
                ("until=0001-01-15T00:00:00Z", "0001-01-14T00:00:00Z", "0001-01-15T00:00:00Z"),
                ("until=0001-01-01T12:00:00Z", "0001-01-01T00:00:00Z", "0001-01-01T12:00:00Z"),
                ("since=0001-01-01T00:00:00Z&until=0001-01-01T01:00:00Z", "0001-01-01T00:00:00Z",
                 "0001-01-01T01:00:00Z"),
                ("since=9999-12-30T00:00:00%2B14:00&until=9999-12-31T23:59:59.999999Z", "9999-12-29T10:00:00Z",
                 "9999-12-31T23:59:59.999999Z")):
            answer = http.get(f"/api/v1/review/figures?{query}")
            assert answer.status_code == 200, (query, answer.text)
            assert (answer.json()["since"], answer.json()["until"], answer.json()["inspections"]) == (since, until, 0)
