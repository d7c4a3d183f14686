"""PostgreSQL: two replicas share one log and one promotion; a database outage gives fast 503s and the
service recovers by itself."""

from __future__ import annotations

import time

import pytest

from fabguard.client import Client, ServiceError
from fabguard.serve.bundle import VERSION
from tests.serve.conftest import TOKEN


def test_two_replicas_on_postgresql_share_log_and_promotion(tmp_path, postgres_url, second_model, wafer_images):
    from fastapi.testclient import TestClient

    from fabguard.serve.app import create_app
    from fabguard.serve.config import load_settings

    one, two = (load_settings(home=tmp_path / n, db=postgres_url, token=TOKEN, sync_seconds=0.05) for n in "ab")
    artifact, report = second_model
    with TestClient(create_app(one)) as a, TestClient(create_app(two)) as b:
        first, second = Client(token=TOKEN, http=a), Client(token=TOKEN, http=b)
        assert [m["version"] for m in second.models()] == [VERSION]
        first.register(artifact, "pca-small-v0.1.0", report)
        first.promote("pca-small-v0.1.0")
        deadline = time.monotonic() + 10
        while b.get("/readyz").json()["model_version"] != "pca-small-v0.1.0":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answers = [c.inspect(wafer_images[0][i], f"WF-{i}", i) for i, c in enumerate((first, second) * 2)]
        assert {x["model_version"] for x in answers} == {"pca-small-v0.1.0"}
        assert {r["inspection_id"] for r in first.inspections()} == {x["inspection_id"] for x in answers}
        assert second.rollback()["version"] == VERSION
        deadline = time.monotonic() + 10
        while a.get("/readyz").json()["model_version"] != VERSION:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_database_outage_fails_fast_and_recovers(tmp_path, postgres, postgres_url, wafer_images, live_server_on):
    """The cluster is stopped under load: inspections answer 503 within the connect timeout, and 200 again
    once it is back, without a restart of the service."""
    url = live_server_on(postgres_url)
    api = Client(url, retries=0, timeout=30)
    image = wafer_images[0][0]
    assert api.inspect(image, "WF-1", 1)["decision"] == "PASS"
    postgres.stop()
    try:
        times = []
        for i in range(3):
            start = time.perf_counter()
            with pytest.raises(ServiceError) as info:
                api.inspect(image, "WF-1", 2)
            times.append(time.perf_counter() - start)
            assert info.value.status == 503
        assert api.http.get("/readyz").status_code == 200  # the model is loaded: the log is what is missing
    finally:
        postgres.start()
    assert max(times) < 5.0
    deadline = time.monotonic() + 30
    while True:
        try:
            assert api.inspect(image, "WF-1", 3)["decision"] == "PASS"
            break
        except ServiceError as exc:
            assert exc.status == 503 and time.monotonic() < deadline
            time.sleep(0.2)
    assert len(api.inspections(wafer_id="WF-1")) == 2


def test_times_are_utc_instants_whatever_the_database_time_zone(postgres_url):
    """psycopg gives times in the session's time zone and reads a time without an offset in it: the log's
    times go in and come out as UTC instants all the same (a database set to Tokyo time here)."""
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa

    from fabguard.serve import db

    name = postgres_url.rsplit("/", 1)[1]
    engine = db.create_engine(postgres_url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text(f"ALTER DATABASE {name} SET timezone TO 'Asia/Tokyo'"))
    engine.dispose()  # new sessions take the database's setting
    db.migrate(engine)
    aware = datetime(2026, 12, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as c:
        assert c.execute(sa.text("SHOW timezone")).scalar() == "Asia/Tokyo"
        c.execute(db.events.insert(), [{"at": aware, "kind": "aware", "detail": {}},
                                       {"at": datetime(2026, 12, 1, 7, 30), "kind": "naive", "detail": {}}])
        rows = c.execute(sa.select(db.events.c.kind, db.events.c.at)).all()
        since = c.execute(sa.select(sa.func.count()).where(db.events.c.at >= datetime(2026, 12, 1, 7, 30))).scalar()
    engine.dispose()
    assert {kind: at for kind, at in rows} == {"aware": datetime(2026, 12, 1, 7, 30, tzinfo=timezone.utc),
                                               "naive": datetime(2026, 12, 1, 7, 30, tzinfo=timezone.utc)}
    assert all(at.utcoffset() == timedelta(0) for _, at in rows) and since == 2
