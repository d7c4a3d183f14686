"""Image retention: expired images and heatmaps deleted, the review queue's kept, the log rows untouched, each
run reading only what expired since the last; the service's periodic task and ``fabguard serve prune``."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from fabguard.cli import main
from fabguard.serve import db, review
from fabguard.serve.bundle import VERSION
from fabguard.serve.config import load_settings
from fabguard.serve.retention import PROGRESS, prune

from tests.serve.conftest import TOKEN, png_bytes

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
PNG = png_bytes(np.full((8, 8), 0.5))  # every stored file here (a .tif name with PNG bytes is never decoded)


def logged(engine, home: Path, age: timedelta, queued: str | None = None, suffix: str = ".png", now=NOW) -> dict:
    """One inspection ``age`` before ``now`` with its image and heatmap files; ``queued``: "waiting" or
    "labelled" puts it in the review queue."""
    iid = uuid.uuid4().hex
    row = {"id": iid, "created_at": now - age, "wafer_id": "WF-1", "inspection_point": 1,
           "model_version": VERSION, "anomaly_score": 0.01, "decision": "PASS", "confidence": 0.9,
           "inference_time_ms": 1.0, "image_ref": f"images/{iid}{suffix}",
           "heatmap_ref": f"heatmaps/WF-1-1-{iid[:12]}.png"}
    for ref in (row["image_ref"], row["heatmap_ref"]):
        (home / ref).write_bytes(PNG)
    with engine.begin() as c:
        c.execute(db.inspections.insert().values(**row))
        if queued:
            c.execute(db.review_items.insert().values(inspection_id=iid, reason="audit", labels_wanted=1,
                                                      created_at=row["created_at"]))
            if queued == "labelled":
                review.record_label(c, iid, "ann", "normal")
    return row


def present(home: Path, row: dict) -> tuple[bool, bool]:
    return (home / row["image_ref"]).exists(), (home / row["heatmap_ref"]).exists()


@pytest.fixture
def state(tmp_path):
    home = tmp_path / "home"
    for sub in ("images", "heatmaps"):
        (home / sub).mkdir(parents=True)
    engine = db.create_engine(f"sqlite:///{home / 'fabguard.db'}")
    db.migrate(engine)
    yield engine, load_settings(home=home, retain_images_days=30)
    engine.dispose()


def test_prune_keeps_the_queue_and_reads_each_inspection_once(state):
    engine, settings = state
    home = settings.home
    old, waiting, labelled, young = (logged(engine, home, timedelta(days=d), q) for d, q in (
        (31, None), (40, "waiting"), (45, "labelled"), (29, None)))
    tif = logged(engine, home, timedelta(days=60), suffix=".tif")
    found = prune(engine, settings, now=NOW)
    assert (found["images"], found["heatmaps"], found["bytes"], found["failed"]) == (2, 2, 4 * len(PNG), 0)
    assert found["cutoff"] == (NOW - timedelta(days=30)).isoformat()
    assert present(home, old) == present(home, tif) == (False, False)
    assert present(home, waiting) == present(home, labelled) == present(home, young) == (True, True)
    with engine.connect() as c:
        rows = c.execute(sa.select(db.inspections.c.id, db.inspections.c.image_ref)).all()
        events = c.execute(sa.select(db.events.c.kind, db.events.c.detail)).all()
    assert {r.id: r.image_ref for r in rows}[old["id"]] == old["image_ref"] and len(rows) == 5  # the log stays
    assert [(e.kind, e.detail["images"], e.detail["home"]) for e in events] == [("retention", 2, str(home))]

    (home / old["image_ref"]).write_bytes(b"restored")  # a file of an inspection already done
    assert prune(engine, settings, now=NOW + timedelta(hours=1))["images"] == 0  # read from the last cutoff on
    assert prune(engine, settings, now=NOW + timedelta(days=2))["images"] == 1  # young expired in between
    assert present(home, young) == (False, False) and present(home, old) == (True, False)
    assert prune(engine, settings, now=NOW + timedelta(days=2), full=True)["images"] == 1  # every expired one
    assert present(home, old) == (False, False)
    assert present(home, waiting) == present(home, labelled) == (True, True)
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(db.events)).scalar() == 3  # runs that deleted


def test_prune_without_retention_and_on_odd_state(state, monkeypatch):
    engine, settings = state
    home = settings.home
    row = logged(engine, home, timedelta(days=400))
    assert prune(engine, load_settings(home=home), now=NOW)["cutoff"] is None  # keep forever (the default)
    assert present(home, row) == (True, True) and not (home / PROGRESS).exists()
    outside = home.parent / "outside.png"
    outside.write_bytes(b"x")
    with engine.begin() as c:  # a reference the service never writes is never followed
        c.execute(db.inspections.update().where(db.inspections.c.id == row["id"]).values(image_ref="../outside.png"))
    (home / PROGRESS).write_text("not json")  # unreadable progress: everything expired is read again
    real = Path.unlink

    def refuse(path, missing_ok=False):
        if path.parent.name == "heatmaps":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    found = prune(engine, settings, now=NOW)
    assert (found["images"], found["heatmaps"], found["failed"]) == (0, 0, 1)
    assert outside.exists() and present(home, row) == (True, True)
    assert (home / PROGRESS).read_text() == "not json"  # not advanced past a file that could not be deleted
    monkeypatch.undo()
    assert prune(engine, settings, now=NOW)["heatmaps"] == 1  # tried again
    assert "done_before" in (home / PROGRESS).read_text()


def test_the_service_prunes_on_its_own_and_the_review_api_answers_404(state):
    from fabguard.serve.app import create_app
    from fastapi.testclient import TestClient

    engine, settings = state
    home, now = settings.home, datetime.now(timezone.utc)
    expired, queued = logged(engine, home, timedelta(days=2), now=now), logged(engine, home, timedelta(days=2),
                                                                                "waiting", now=now)
    settings = load_settings(home=home, token=TOKEN, retain_images_days=1, retention_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 20
        while (home / expired["image_ref"]).exists():
            assert time.monotonic() < deadline, "the retention task did not run"
            time.sleep(0.02)
        image = client.get(f"/api/v1/review/items/{expired['id']}/image.png")
        assert image.status_code == 404 and image.headers["content-type"] == "application/json"
        assert client.get(f"/api/v1/heatmaps/{Path(expired['heatmap_ref']).stem}.png").status_code == 404
        assert client.get(f"/api/v1/review/items/{queued['id']}/image.png").status_code == 200
        assert client.get(f"/api/v1/heatmaps/{Path(queued['heatmap_ref']).stem}.png").status_code == 200
        record = client.get(f"/api/v1/inspections/{expired['id']}").json()
        assert record["image_ref"] == expired["image_ref"]  # the log row stays


def test_prune_command(state, tmp_path, capsys):
    engine, settings = state
    home = settings.home
    row = logged(engine, home, timedelta(days=3650))
    assert main(["serve", "prune", "--home", str(home)]) == 2
    assert "no retention set" in capsys.readouterr().err
    assert main(["serve", "prune", "--home", str(tmp_path / "nowhere"), "--days", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["serve", "prune", "--home", str(home), "--days", "0"])
    assert "--days: '0' must be" in capsys.readouterr().err
    assert main(["serve", "prune", "--home", str(home), "--days", "7"]) == 0
    assert capsys.readouterr().out.startswith("deleted 1 images and 1 heatmaps (0.0 MB) of inspections before ")
    assert present(home, row) == (False, False)
