"""``fabguard serve`` as a process: starts on a fresh home, metrics, kill -9 keeps every answered inspection."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from fabguard.client import Client, ServiceError
from fabguard.serve.bundle import VERSION
from tests.serve.conftest import free_port


def start(home, port, *extra):
    env = {**os.environ, "FABGUARD_SYNC_SECONDS": "0.2", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "fabguard", "serve", "--port", str(port), "--home", str(home),
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = Client(f"http://127.0.0.1:{port}", timeout=10)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if api.ready():
                return proc, api
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        assert time.monotonic() < deadline, "service did not become ready"
        time.sleep(0.1)


def test_fresh_install_serves_metrics_and_survives_kill_9(tmp_path, wafer_images):
    home, port = tmp_path / "home", free_port()
    token = tmp_path / "token"
    token.write_text("process-token\n")
    proc, api = start(home, port, "--token-file", str(token))
    answered, stop = [], threading.Event()

    def hammer(i):
        with Client(api.http.base_url, timeout=10, retries=0) as c:
            while not stop.is_set():
                try:
                    answered.append(c.inspect(wafer_images[0][i % 8], f"WF-{i}", len(answered))["inspection_id"])
                except Exception:  # noqa: BLE001 - requests cut by the kill are expected to fail
                    return
    try:
        metrics = api.http.get("/metrics").text
        assert f'fabguard_model_serving{{model_version="{VERSION}"}} 1.0' in metrics
        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(answered) > 10
    with sqlite3.connect(home / "fabguard.db") as c:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        logged = {r[0] for r in c.execute("SELECT id FROM inspections")}
    assert set(answered) <= logged
    proc, api = start(home, port, "--token-file", str(token))
    try:
        with pytest.raises(ServiceError, match="409"):  # past the token check: nothing to roll back to
            Client(api.http.base_url, token="process-token").rollback()
        with pytest.raises(ServiceError, match="401"):
            Client(api.http.base_url, token="wrong").rollback()
        assert len(api.inspections(limit=1000)) == min(len(logged), 1000)
        api.inspect(wafer_images[0][0], "WF-AFTER", 1)
        metrics = api.http.get("/metrics").text
        for name in ("fabguard_inspections_total", "fabguard_anomaly_score_bucket", "fabguard_inference_seconds",
                     "fabguard_request_seconds", "fabguard_requests_in_flight", "fabguard_queue_depth",
                     "fabguard_batch_size", "fabguard_model_loaded", "fabguard_log_write_seconds"):
            assert name in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
