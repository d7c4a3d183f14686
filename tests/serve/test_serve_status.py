"""The status page for sites without Grafana: its JSON (/api/v1/status), the latency quantiles it derives
from the request histogram, and the page itself in a real headless Chromium."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from tests.serve.conftest import TOKEN
from tests.serve.test_serve_drift import insert
from fabguard.serve.bundle import VERSION
from fabguard.serve.monitor import bucket_quantile


@pytest.fixture
def settings(settings):
    settings.monitor_seconds = 0.2  # the timeline gets points while the test runs
    return settings


def test_bucket_quantile_interpolates_as_prometheus():
    bounds = np.array([0.01, 0.02, 0.04, np.inf])
    # 10 observations in (0, 0.01], 10 in (0.01, 0.02]: the median is the first bucket's top, 0.01;
    # q = 0.75 is rank 15, halfway through the second bucket: 0.01 + 0.5 * 0.01
    counts = np.array([10.0, 20.0, 20.0, 20.0])
    assert bucket_quantile(0.5, bounds, counts) == 0.01
    assert bucket_quantile(0.75, bounds, counts) == pytest.approx(0.015, abs=1e-15)  # one rounding of 0.01 + 0.005
    assert bucket_quantile(0.99, bounds, np.array([0.0, 0.0, 0.0, 5.0])) == 0.04  # +Inf bucket: largest bound
    assert bucket_quantile(0.5, bounds, np.zeros(4)) is None


def test_status_json_counts_the_log(app_client, normal_line):
    client, app = app_client
    scores, decisions, embeddings = normal_line
    now = datetime.now(timezone.utc)
    insert(app.state.service.engine, VERSION, scores[:300], decisions[:300], embeddings[:300],
           start=now - timedelta(minutes=20), step=timedelta(seconds=2))
    insert(app.state.service.engine, VERSION, [1.0] * 30, ["REJECT"] * 30, None,
           start=now - timedelta(hours=3), step=timedelta(seconds=1))
    app.state.service.monitor.refresh()
    status = client.get("/api/v1/status").json()
    assert status["model_version"] == VERSION and status["limits"]["reject_rate"] == 0.05
    assert sum(h["total"] for h in status["hours"]) == 330
    assert sum(h["REJECT"] for h in status["hours"]) == 30 + (decisions[:300] == "REJECT").sum()
    old = [h for h in status["hours"] if h["total"] == 30 and h["REJECT"] == 30]
    assert old and old[0]["reject_rate"] == 1.0 and old[0]["pass_mean_score"] is None
    hist = status["score_histogram"]
    assert hist["n"] == 300 and sum(hist["counts"]) + hist["above"] == 300  # the 1.0 scores are 3 h old
    assert len(hist["edges"]) == len(hist["counts"]) + 1
    assert status["timeline"] and status["drift"]["model_version"] == VERSION
    assert status["drift"]["score_pvalue"] == status["timeline"][-1]["score_pvalue"]


def test_status_page_files_and_policy(client):
    page = client.get("/status")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    script = client.get("/status/status.js")
    assert script.status_code == 200 and "https://" not in script.text.replace("http://www.w3.org/2000/svg", "")
    assert client.get("/status/other.js").status_code == 404


def _post(url: str, body: bytes) -> dict:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "image/png", "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_status_page_draws_every_panel_in_a_browser(browser, served, wafer_images, normal_line, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    scores, decisions, embeddings = normal_line
    insert(served.engine, VERSION, scores[:400], decisions[:400], embeddings[:400],
           start=datetime.now(timezone.utc) - timedelta(minutes=50), step=timedelta(seconds=5))
    images, _ = wafer_images
    for i, image in enumerate(images):  # real inspections: the latency histogram gets observations
        _post(f"{served.url}/api/v1/inspect?wafer_id=WF-S&inspection_point={i}", image)
    time.sleep(0.6)  # a few monitor ticks (monitor_seconds = 0.2)
    browser.get_log("browser")  # the session's browser: drop what earlier pages logged
    browser.get(served.url + "/status")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
    drawn = {box.get_attribute("id"): int(box.find_element(By.TAG_NAME, "svg").get_attribute("data-points"))
             for box in browser.find_elements(By.CLASS_NAME, "chart")}
    assert set(drawn) == {"decisions", "reject-rate", "histogram", "latency", "queue", "drift", "pass-score"}
    assert all(n > 0 for n in drawn.values()), drawn
    assert browser.find_element(By.ID, "model").text == VERSION
    assert browser.find_element(By.ID, "drift-badge").text == "drift: ok"
    assert not browser.find_element(By.ID, "error").is_displayed()
    problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems  # no script error, no Content-Security-Policy violation
    shot = Path(os.environ.get("FABGUARD_SCREENSHOT_DIR", tmp_path)) / "status.png"
    assert browser.save_screenshot(str(shot))
