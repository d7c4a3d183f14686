"""Fixtures of the service tests: a state folder, apps on it, image bytes, the bundled and a second model,
a stationary line through the bundled one, a live server."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from fabguard.anomaly.synthetic import synthetic_set

TOKEN = "test-token-0123456789"


def png_bytes(gray: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.round(gray * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="session")
def wafer_images():
    """PNG bytes of 4 normal and 4 defective synthetic wafer images (256 x 256, the case study's size)."""
    images = synthetic_set(4, 4, 256, seed=11)
    return [png_bytes(im[0]) for im in images.images], list(images.labels)


@pytest.fixture
def settings(tmp_path):
    from fabguard.serve.config import load_settings

    return load_settings(home=tmp_path / "home", token=TOKEN, max_wait_ms=1.0, sync_seconds=0.1)


@pytest.fixture
def app_client(settings):
    """(TestClient, app) with the lifespan run (default model registered and promoted)."""
    from fastapi.testclient import TestClient

    from fabguard.serve.app import create_app

    app = create_app(settings)
    with TestClient(app) as client:
        yield client, app


@pytest.fixture
def client(app_client):
    return app_client[0]


@pytest.fixture
def api(client):
    """fabguard.client over the TestClient, with the token."""
    from fabguard.client import Client

    return Client(token=TOKEN, http=client, backoff=0.01)


@pytest.fixture(scope="session")
def second_model(tmp_path_factory):
    """(artifact, report) of another small PCA model (8 components, 32 x 32), so its scores differ."""
    from fabguard.anomaly.export import export_onnx
    from fabguard.anomaly.pca import PCADetector

    folder = tmp_path_factory.mktemp("second")
    detector = PCADetector(n_components=8, input_size=32, seed=3).fit(synthetic_set(120, 0, 32, seed=3).images)
    artifact = export_onnx(detector, folder / "m.onnx")
    report = {"auroc": 0.99, "auprc": 0.97, "fnr_at_fpr5": 0.0, "latency_ms_p50": 0.3}
    (folder / "report.json").write_text(json.dumps(report))
    return artifact, report


@pytest.fixture(scope="session")
def bundled():
    """The bundled default model's ONNX Runtime inspector (CPU, one thread)."""
    from fabguard.anomaly.runtime import Inspector
    from fabguard.serve.bundle import FOLDER, VERSION

    return Inspector(FOLDER / f"{VERSION}.onnx", providers=["CPUExecutionProvider"], threads=1)


@pytest.fixture(scope="session")
def normal_line(bundled):
    """(scores, decisions, embeddings) of 400 normal synthetic wafers through the bundled model, drawn at the
    size it was fitted on (other sizes look like drift to it), as the service logs them."""
    from bench.serve.drift_bench import observe, stream
    from fabguard.serve.bundle import SOURCE

    return observe(bundled, stream(400, np.random.default_rng(5), SOURCE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(settings):
    """Start a real uvicorn server on 127.0.0.1 in a thread; returns (base URL, stop)."""
    import uvicorn

    from fabguard.serve.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)

    def stop():
        server.should_exit = True
        thread.join(timeout=20)
    return f"http://127.0.0.1:{port}", stop


@pytest.fixture
def live_server(settings):
    """A live server on the test's settings; yields its base URL."""
    url, stop = run_server(settings)
    yield url
    stop()


@pytest.fixture
def live_server_on(settings):
    """``live_server_on(db_url)``: a live server on another database."""
    stops = []

    def start(db_url):
        settings.db = db_url
        url, stop = run_server(settings)
        stops.append(stop)
        return url
    yield start
    for stop in stops:
        stop()

@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster for the session (skipped only where the server binaries are not installed)."""
    from tests.serve.pg import Cluster, binaries

    if binaries() is None:
        if os.environ.get("CI"):  # .ci/run installs them: a missing server there is a failure, not a skip
            pytest.fail("PostgreSQL server binaries not installed; .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    cluster = Cluster(free_port()).init()
    yield cluster
    cluster.remove()


@pytest.fixture
def postgres_url(postgres):
    """A fresh database in the session's cluster."""
    import uuid

    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres.url.replace("postgresql://", "postgresql+psycopg://"),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


from tests.serve.browser import browser, served  # noqa: E402,F401  (fixtures: headless Chromium, a live service)
