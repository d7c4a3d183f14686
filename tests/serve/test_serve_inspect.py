"""POST /api/v1/inspect: the case study's response, logged before it is sent; heatmaps; history."""

from __future__ import annotations

import contextlib
import gc
import io
import math
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import sqlalchemy as sa
import tifffile
from PIL import Image

from fabguard.serve import db
from fabguard.anomaly.images import decode, prepare
from fabguard.anomaly.reference import grid_embedding
from fabguard.serve.bundle import VERSION
from fabguard.serve.engine import confidence

FIELDS = {"wafer_id", "inspection_point", "anomaly_score", "decision", "confidence", "heatmap_url",
          "latent_vector", "model_version", "inference_time_ms", "inspection_id"}


def test_fresh_home_serves_the_bundled_model(client):
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == VERSION
    assert client.get("/healthz").json() == {"status": "alive", "model_version": None, "loaded": []}
    [model] = client.get("/api/v1/models").json()
    assert model["serving"] and model["loaded"] and len(model["sha256"]) == 64
    assert model["report"]["auroc"] >= 0.95


def test_response_has_the_case_study_fields_and_is_logged(app_client, api, wafer_images):
    client, app = app_client
    images, labels = wafer_images
    answers = [api.inspect(im, "WF-2024-001234", 42 + i) for i, im in enumerate(images)]
    for answer, label in zip(answers, labels):
        assert set(answer) == FIELDS
        assert answer["wafer_id"] == "WF-2024-001234" and answer["model_version"] == VERSION
        assert len(answer["latent_vector"]) == 128 and all(math.isfinite(v) for v in answer["latent_vector"])
        assert answer["heatmap_url"].startswith(f"/api/v1/heatmaps/WF-2024-001234-{answer['inspection_point']}-")
        assert 0.5 <= answer["confidence"] <= 1 and answer["inference_time_ms"] > 0
        assert answer["decision"] == ("REJECT" if label else "PASS")  # the synthetic defects are obvious
    engine = app.state.service.engine
    with engine.connect() as c:
        rows = {r.id: r for r in c.execute(sa.select(db.inspections))}
    for answer in answers:
        row = rows[answer["inspection_id"]]
        assert (row.anomaly_score, row.decision, row.confidence, row.model_version) == (
            answer["anomaly_score"], answer["decision"], answer["confidence"], answer["model_version"])
    heatmap = Image.open(io.BytesIO(_heatmap_when_written(client, answers[-1]["heatmap_url"])))
    assert heatmap.format == "PNG" and heatmap.size == (64, 64)  # the model's input size
    home = app.state.service.settings.home
    assert (home / api.inspection(answers[0]["inspection_id"])["image_ref"]).read_bytes() == images[0]


def _heatmap_when_written(client, url: str) -> bytes:
    deadline = time.monotonic() + 20  # written after the answer
    while (r := client.get(url)).status_code == 404:
        assert time.monotonic() < deadline, f"{url} never appeared"
        time.sleep(0.02)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return r.content


def test_heatmap_is_drawn_from_the_planes_the_inspection_kept(app_client, api, wafer_images):
    client, app = app_client
    images, labels = wafer_images
    defective = images[labels.index(1)]
    answer = api.inspect(defective, "WF-7", 1)
    png = np.asarray(Image.open(io.BytesIO(_heatmap_when_written(client, answer["heatmap_url"]))))
    home, model = app.state.service.settings.home, app.state.service.registry.serving
    name = answer["heatmap_url"].rsplit("/", 1)[1].removesuffix(".png")
    grey, alpha = np.load(home / "heatmaps" / f"{name}.npy", allow_pickle=False)
    size = model.inspector.input_size
    # the grey plane is the model's input: the mean of three equal float32 channels is that channel to within
    # one ulp, which can move a value that rounds at .5 by one 8-bit level, no more
    expected = np.round(prepare(decode(defective), size).mean(axis=0) * 255)
    assert grey.shape == alpha.shape == (size, size) and np.abs(grey - expected).max() <= 1
    assert alpha.max() == 255  # relative to the heatmap's own maximum
    assert png.shape == (size, size, 3) and (png[..., 1] == png[..., 2]).all() and (png[..., 0] >= png[..., 1]).all()
    # grey under red of opacity 0.7 x heat: computed here in float64, there in float32, whose rounding error
    # (~1e-7 of 255) can move a value that rounds at .5 by one level
    g, a = grey / 255, alpha / 255 * 0.7
    assert np.abs(png[..., 0] - np.round((g * (1 - a) + a) * 255)).max() <= 1
    assert np.abs(png[..., 1] - np.round(g * (1 - a) * 255)).max() <= 1
    assert (png[alpha == 255, 0] > png[alpha == 255, 1]).all()  # the hottest place is red


def test_heatmap_png_kept_by_earlier_builds_is_served_and_damaged_planes_are_missing(app_client, wafer_images):
    client, app = app_client
    folder = app.state.service.settings.home / "heatmaps"
    (folder / "WF-1-1-aaaaaaaaaaaa.png").write_bytes(wafer_images[0][0])
    assert client.get("/api/v1/heatmaps/WF-1-1-aaaaaaaaaaaa.png").content == wafer_images[0][0]
    (folder / "WF-1-2-bbbbbbbbbbbb.npy").write_bytes(b"not an array")
    np.save(folder / "WF-1-3-cccccccccccc.npy", np.zeros((2, 4, 4), np.float32))  # not what the service writes
    for name in ("WF-1-2-bbbbbbbbbbbb", "WF-1-3-cccccccccccc"):
        r = client.get(f"/api/v1/heatmaps/{name}.png")
        assert r.status_code == 404 and "no heatmap" in r.json()["detail"]


def test_tiff_and_16_bit_images_are_inspected(api, wafer_images):
    gray = np.asarray(Image.open(io.BytesIO(wafer_images[0][0])), dtype=np.uint16) * 257
    out = io.BytesIO()
    tifffile.imwrite(out, gray)
    answer = api.inspect(out.getvalue(), "WF-1", 1)
    png = api.inspect(wafer_images[0][0], "WF-1", 2)
    assert answer["decision"] == "PASS"
    # v * 257 / 65535 and v / 255 are the same real number, so both decode to the same float32 input
    assert answer["anomaly_score"] == png["anomaly_score"]


def test_history_filters(api, wafer_images):
    images, labels = wafer_images
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    for i, im in enumerate(images):
        api.inspect(im, f"WF-{i % 2}", i)
    assert len(api.inspections()) == len(images)
    assert {r["wafer_id"] for r in api.inspections(wafer_id="WF-1")} == {"WF-1"}
    assert len(api.inspections(decision="REJECT")) == sum(labels)
    assert len(api.inspections(limit=3)) == 3
    assert len(api.inspections(since=start.isoformat())) == len(images)
    assert api.inspections(since=(start + timedelta(hours=1)).isoformat()) == []
    # the same instants written with other UTC offsets select the same inspections (SQLite keeps UTC times)
    for hours in (2, -5):
        zone = timezone(timedelta(hours=hours))
        assert len(api.inspections(since=start.astimezone(zone).isoformat())) == len(images)
        assert api.inspections(since=(start + timedelta(hours=1)).astimezone(zone).isoformat()) == []
    newest = api.inspections(limit=1)[0]
    assert newest["inspection_point"] == len(images) - 1
    # every time in an answer carries its offset (SQLite gives times back without one)
    assert datetime.fromisoformat(newest["created_at"].replace("Z", "+00:00")).utcoffset() == timedelta(0)
    assert all(datetime.fromisoformat(m["registered_at"].replace("Z", "+00:00")).utcoffset() == timedelta(0)
               for m in api.models())
    assert api.inspection(newest["inspection_id"]) == newest


def test_confidence_is_one_half_on_a_threshold_and_rises_away_from_both():
    review, reject = 0.02, 0.05
    assert confidence(review, review, reject) == confidence(reject, review, reject) == 0.5
    below = [confidence(s, review, reject) for s in np.linspace(0.02, -0.2, 50)]
    above = [confidence(s, review, reject) for s in np.linspace(0.05, 0.5, 50)]
    assert np.all(np.diff(below) > 0) and np.all(np.diff(above) > 0) and below[-1] > 0.99
    assert confidence(0.035, review, reject) == pytest.approx(1 - 0.5 * math.exp(-0.5))  # middle of the band
    assert confidence(0.02, 0.02, 0.02) == 0.5 and confidence(0.03, 0.02, 0.02) == pytest.approx(1.0)


def test_embedding_is_the_heatmap_on_an_8_by_16_grid():
    heatmap = np.zeros((64, 64))
    heatmap[:8, 60:] = 1.0  # top-right corner: cell (0, 15)
    vector = grid_embedding(heatmap[None])[0]
    assert vector.shape == (128,) and vector[15] == 1.0 and vector.sum() == 1.0
    uneven = np.zeros((61, 64))  # rows split 8, 8, 8, 8, 8, 7, 7, 7 (numpy.array_split)
    uneven[-7:, :4] = 1.0  # bottom-left cell, 7 rows x 4 columns
    vector = grid_embedding(uneven[None])[0]
    assert vector[7 * 16] == 1.0 and vector.sum() == 1.0


@pytest.mark.parametrize("shape", [(256, 256), (61, 70)])  # equal cells (reshaped) and unequal (split)
def test_embedding_cells_are_the_means_of_their_pixels(shape):
    """Each value is its cell's mean, summed in float64: at most 512 terms (a 32 x 16 cell), so either
    summation order is within 512 * 2**-53 (6e-14, relative) of the exact sum; rtol 1e-12 is above that."""
    heatmaps = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    rows, cols = np.array_split(np.arange(shape[0]), 8), np.array_split(np.arange(shape[1]), 16)
    expected = [[heatmaps[i][np.ix_(r, c)].astype(np.float64).mean() for r in rows for c in cols] for i in range(2)]
    np.testing.assert_allclose(grid_embedding(heatmaps), expected, rtol=1e-12)


def test_a_latent_output_is_used_as_the_latent_vector():
    """A VAE artifact's third output ``latent`` (mu) is returned as is."""
    from types import SimpleNamespace

    from fabguard.anomaly.thresholds import Thresholds
    from fabguard.serve.engine import score_batch
    from fabguard.serve.registry import Loaded

    mu = np.arange(2 * 128, dtype=np.float32).reshape(2, 128)
    inspector = SimpleNamespace(input_size=16, max_batch=8, session=None,
                                thresholds=Thresholds(0.1, 0.2, 0.95, 0.995, 100),
                                run=lambda session, batch, n: [np.array([0.05, 0.3], np.float32),
                                                               np.zeros((2, 16, 16), np.float32), mu])
    results = score_batch(Loaded("vae-wafer-v2.3.1", inspector, ("score", "heatmap", "latent")),
                          [np.zeros((3, 20, 20), np.float32)] * 2)
    assert np.array_equal(np.stack([r.latent for r in results]), mu)
    assert [r.decision for r in results] == ["PASS", "REJECT"]


def test_metrics_after_inspections(client, api, wafer_images):
    images, labels = wafer_images
    for i, im in enumerate(images):
        api.inspect(im, "WF-M", i)
    client.get("/api/v1/inspections/" + "0" * 32)
    text = client.get("/metrics").text
    version = f'model_version="{VERSION}"'
    assert f'fabguard_inspections_total{{decision="REJECT",{version}}} {float(sum(labels))}' in text
    assert f'fabguard_anomaly_score_count{{{version}}} {float(len(images))}' in text
    assert f'fabguard_log_write_seconds_count {float(len(images))}' in text
    assert 'fabguard_request_seconds_count{method="POST",route="/api/v1/inspect",status="200"} 8.0' in text
    assert 'route="/api/v1/inspections/{inspection_id}",status="404"' in text
    assert "fabguard_queue_depth 0.0" in text and "fabguard_requests_in_flight 1.0" in text  # the scrape itself
    assert f"fabguard_model_serving{{{version}}} 1.0" in text


def _batcher(max_wait_ms: float):
    """A Batcher over a stub model that records each ONNX Runtime call's batch size."""
    from types import SimpleNamespace

    from fabguard.anomaly.thresholds import Thresholds
    from fabguard.serve.engine import Batcher
    from fabguard.serve.metrics import Metrics
    from fabguard.serve.registry import Loaded

    calls, logged = [], []

    def run(session, batch, n):
        calls.append(len(batch))
        return [batch.mean(axis=(1, 2, 3)), batch[:, 0], np.zeros((len(batch), 128), np.float32)]

    inspector = SimpleNamespace(input_size=4, max_batch=8, session=None, run=run,
                                thresholds=Thresholds(0.5, 0.8, 0.95, 0.995, 100))
    registry = SimpleNamespace(serving=Loaded("stub-v1.0.0", inspector, ("score", "heatmap", "latent")))
    batcher = Batcher(registry, Metrics(8), max_batch=8, max_wait_ms=max_wait_ms)
    batcher.log = logged.extend
    return batcher, calls, logged


def _image(value: float):
    return lambda: np.full((3, 4, 4), value, np.float32)


def test_requests_decoding_together_are_scored_in_one_call():
    """Eight requests whose decodes end together: the first waits for the seven still decoding (max wait
    5 s, far more than they need), so the model is called once with all eight, and each gets its own score."""
    import asyncio
    import threading

    async def main():
        batcher, calls, logged = _batcher(max_wait_ms=5000)
        gate = threading.Event()

        def decode(value):
            gate.wait(10)
            return _image(value)()

        tasks = [asyncio.ensure_future(batcher.score(lambda v=i / 10: decode(v), {"id": str(i), "wafer_id": "W"}))
                 for i in range(8)]
        await asyncio.sleep(0.05)
        gate.set()
        answers = await asyncio.gather(*tasks)
        await batcher.stop()
        return calls, logged, answers

    calls, logged, answers = asyncio.run(main())
    assert calls == [8] and len(logged) == 8
    assert [round(result.score, 6) for result, _, _ in answers] == [round(i / 10, 6) for i in range(8)]
    assert [row["id"] for _, row, _ in answers] == [str(i) for i in range(8)]


def test_a_lone_request_does_not_wait_and_a_bad_image_gets_its_own_error():
    """With a 10 s max wait, a lone request is answered at once (nobody else is decoding), and a decode
    error reaches that request only."""
    import asyncio
    import time

    from fabguard.errors import InputError

    def bad():
        raise InputError("image: damaged")

    async def main():
        batcher, calls, _ = _batcher(max_wait_ms=10_000)
        start = time.perf_counter()
        result, row, _ = await batcher.score(_image(0.9), {"id": "a", "wafer_id": "W"})
        elapsed = time.perf_counter() - start
        with pytest.raises(InputError, match="damaged"):
            await batcher.score(bad, {"id": "b", "wafer_id": "W"})
        again, _, _ = await batcher.score(_image(0.1), {"id": "c", "wafer_id": "W"})
        await batcher.stop()
        return elapsed, result, again, calls

    elapsed, result, again, calls = asyncio.run(main())
    assert elapsed < 5.0, f"a lone request waited {elapsed:.2f} s"  # the wait it must not do is 10 s
    assert (result.decision, again.decision) == ("REJECT", "PASS") and calls == [1, 1]


def test_a_failing_model_call_answers_its_requests_and_the_batcher_lives_on():
    """An exception in the ONNX Runtime call (or in the log commit) is each waiting request's answer; the
    next request is scored as usual (the scoring lock was released)."""
    import asyncio

    async def main():
        batcher, calls, _ = _batcher(max_wait_ms=1)
        run = batcher.registry.serving.inspector.run
        batcher.registry.serving.inspector.run = lambda *a: (_ for _ in ()).throw(RuntimeError("device lost"))
        with pytest.raises(RuntimeError, match="device lost"):
            await batcher.score(_image(0.9), {"id": "a", "wafer_id": "W"})
        batcher.registry.serving.inspector.run = run
        result, _, _ = await batcher.score(_image(0.9), {"id": "b", "wafer_id": "W"})
        await batcher.stop()
        return result

    assert asyncio.run(main()).decision == "REJECT"


def test_a_request_queued_while_a_batch_is_scored_is_scored_next_by_that_thread():
    """Request b is decoded while a's batch is in the model call: b's thread finds the scoring lock taken
    and leaves b in the queue; a's thread scores it after its own batch (nobody else will), so b is
    answered, in a call of its own."""
    import asyncio
    import threading

    async def main():
        batcher, calls, _ = _batcher(max_wait_ms=0)
        run = batcher.registry.serving.inspector.run
        in_call, go_on = threading.Event(), threading.Event()

        def slow_run(*args):
            in_call.set()
            go_on.wait(10)
            return run(*args)

        batcher.registry.serving.inspector.run = slow_run
        a = asyncio.ensure_future(batcher.score(_image(0.9), {"id": "a", "wafer_id": "W"}))
        await asyncio.get_running_loop().run_in_executor(None, in_call.wait, 10)
        b = asyncio.ensure_future(batcher.score(_image(0.1), {"id": "b", "wafer_id": "W"}))
        while batcher.queue.empty():  # b decoded and queued behind a's call
            await asyncio.sleep(0.005)
        go_on.set()
        answers = await asyncio.wait_for(asyncio.gather(a, b), 10)
        return answers, calls

    (a, b), calls = asyncio.run(main())
    assert (a[1]["id"], a[0].decision, b[1]["id"], b[0].decision) == ("a", "REJECT", "b", "PASS")
    assert calls == [1, 1]


def test_heatmap_data_is_written_during_the_next_model_call(app_client, api, wafer_images, monkeypatch):
    """After-answer work holds the GIL; it waits for a model call (which does not) to run beside, or for
    AFTER_WAIT_S on a quiet line."""
    from fabguard.serve.routers import anomaly

    client, app = app_client
    monkeypatch.setattr(anomaly, "AFTER_WAIT_S", 60.0)
    first = api.inspect(wafer_images[0][0], "WF-1", 1)
    time.sleep(0.3)
    assert client.get(first["heatmap_url"]).status_code == 404  # still waiting: no model call since
    api.inspect(wafer_images[0][1], "WF-1", 2)
    _heatmap_when_written(client, first["heatmap_url"])  # within seconds, not AFTER_WAIT_S


def test_after_answer_work_waits_at_most_its_own_deadline_so_a_backlog_does_not_pile_up(
        app_client, api, wafer_images, monkeypatch):
    """With no model call seen (a model so quick the thread never catches one), each inspection's work
    runs AFTER_WAIT_S after its own answer: 8 inspections need about 1 s, not 8 waits of 1 s in a row."""
    from fabguard.serve.routers import anomaly

    class Unseen(threading.Event):
        def set(self):
            pass

    client, app = app_client
    monkeypatch.setattr(anomaly, "AFTER_WAIT_S", 1.0)
    monkeypatch.setattr(app.state.service.batcher, "in_model", Unseen())
    urls = [api.inspect(wafer_images[0][i % 2], "WF-1", i)["heatmap_url"] for i in range(8)]
    answered = time.monotonic()
    for url in urls:
        _heatmap_when_written(client, url)
    assert time.monotonic() - answered < 4.0


def test_sqlite_log_is_checkpointed_by_the_service_not_inside_a_commit(app_client, api, wafer_images):
    """The commit that takes the WAL past 1000 pages would otherwise copy it into the database file while
    an inspection waits for its answer."""
    client, app = app_client
    service = app.state.service
    with service.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == db.FALLBACK_CHECKPOINT_PAGES
    path = service.settings.home / "fabguard.db"

    def in_file() -> set[str]:  # the database file alone: immutable=1 reads no WAL
        with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as connection:
            try:
                return {row[0] for row in connection.execute("SELECT id FROM inspections")}
            except sqlite3.DatabaseError:  # no table yet (the schema is still in the WAL), or read while a
                return set()  # checkpoint writes the file, which immutable=1 tells SQLite cannot happen

    ids = {api.inspect(wafer_images[0][0], "WF-1", i)["inspection_id"] for i in range(3)}
    deadline = time.monotonic() + 10 * db.CHECKPOINT_SECONDS
    while not ids <= in_file():
        assert time.monotonic() < deadline, "the inspections never reached the database file"
        time.sleep(0.05)


def test_checkpoint_moves_committed_rows_into_the_database_file(tmp_path):
    engine = db.create_engine(f"sqlite:///{tmp_path / 'log.db'}", autocheckpoint=False)
    with engine.connect() as connection:  # SQLite's own checkpoint only past the fallback's 10,000 pages
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == db.FALLBACK_CHECKPOINT_PAGES
    db.migrate(engine)
    db.checkpoint(engine)  # the tables, into the file
    with engine.begin() as connection:
        connection.execute(db.events.insert().values(at=datetime.now(timezone.utc), kind="test", detail={}))

    def in_file() -> int:
        with contextlib.closing(sqlite3.connect(f"file:{tmp_path / 'log.db'}?immutable=1", uri=True)) as c:
            return c.execute("SELECT count(*) FROM events").fetchone()[0]

    assert in_file() == 0  # committed, in the WAL only
    db.checkpoint(engine)
    assert in_file() == 1
    engine.dispose()


def test_start_up_objects_are_frozen_out_of_full_collections(settings):
    from fastapi.testclient import TestClient

    from fabguard.serve.app import create_app

    gc.unfreeze()
    with TestClient(create_app(settings)):
        assert gc.get_freeze_count() > 10_000  # modules, registry, sessions: not walked by a full collection
    assert gc.get_freeze_count() == 0  # and unfrozen when the service stops


def test_garbage_is_collected_by_the_service_not_by_allocation_thresholds(settings, monkeypatch):
    """While serving, the automatic collector is off and the service's periodic pass collects reference
    cycles (beside a model call, or after BESIDE_WAIT_S when there is none); on shutdown, automatic
    collection is back."""
    import weakref

    from fastapi.testclient import TestClient

    from fabguard.serve import app as app_module

    class Node:
        pass

    monkeypatch.setattr(app_module, "GC_SECONDS", 0.1)
    assert gc.isenabled()
    with TestClient(app_module.create_app(settings)):
        assert not gc.isenabled()
        cycle = Node()
        cycle.itself = cycle
        alive = weakref.ref(cycle)
        del cycle
        deadline = time.monotonic() + 10
        while alive() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive() is None  # freed by the service's own pass (nothing else collects now)
    assert gc.isenabled()


def test_periodic_work_runs_beside_a_model_call_or_after_its_wait():
    """A periodic task's work starts as a batch enters ONNX Runtime (the GIL free), or after its wait on
    an idle service: it never waits for traffic."""
    batcher, calls, _ = _batcher(0.0)
    ran = []
    start = time.monotonic()
    batcher.beside_model(lambda: ran.append(time.monotonic() - start), 0.2)
    assert ran and ran[0] >= 0.2  # no model call: after the wait, not before
    waiting = threading.Thread(target=batcher.beside_model, args=(lambda: ran.append(time.monotonic()), 60.0))
    waiting.start()
    time.sleep(0.1)
    assert len(ran) == 1  # still waiting for a model call
    inspector = batcher.registry.serving.inspector
    real_run = inspector.run

    def watched_run(session, batch, n):  # the model call: returns once the waiting work has run
        waiting.join(10)
        return real_run(session, batch, n)

    inspector.run = watched_run
    entered = time.monotonic()
    batcher._score_and_log(batcher.registry.serving, "production", [_image(0.3)()], [{"id": "a"}])
    assert len(ran) == 2 and entered <= ran[1] < entered + 10 and calls == [1]
