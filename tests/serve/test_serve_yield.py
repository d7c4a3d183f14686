"""Yield jobs: production records in, the report JSON and the forest plot out, detection off the request."""

from __future__ import annotations

import gzip
import io
import time
from importlib.resources import files

import pandas as pd
from PIL import Image

DEMO = files("fabguard.machine_yield") / "demo_production.csv.gz"


def wait_done(client, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while (job := client.get(f"/api/v1/yield/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def test_csv_and_parquet_jobs_give_the_report_and_plot(client):
    csv = gzip.decompress(DEMO.read_bytes())
    submitted = client.post("/api/v1/yield/jobs?resamples=5&seed=1", content=csv, headers={"content-type": "text/csv"})
    assert submitted.status_code == 202 and submitted.json()["status"] in ("queued", "running", "done")
    job = wait_done(client, submitted.json()["job_id"])
    assert job["status"] == "done" and job["error"] is None, job
    report = job["report"]
    assert report["machines"] and set(report["low_yield"]) <= {m["machine"] for m in report["machines"]}
    assert Image.open(io.BytesIO(client.get(job["plot_url"]).content)).format == "PNG"
    parquet = io.BytesIO()
    pd.read_csv(io.BytesIO(csv)).to_parquet(parquet)
    again = client.post("/api/v1/yield/jobs?resamples=5&seed=1", content=parquet.getvalue(),
                        headers={"content-type": "application/vnd.apache.parquet"})
    assert wait_done(client, again.json()["job_id"])["report"]["low_yield"] == report["low_yield"]


def test_bad_records_are_refused_before_a_job_exists(client):
    bad = client.post("/api/v1/yield/jobs", content=b"batch,step\n1,1\n", headers={"content-type": "text/csv"})
    assert bad.status_code == 422 and "machine" in bad.json()["detail"]
    assert client.post("/api/v1/yield/jobs", content=b"{}", headers={"content-type": "application/json"}
                       ).status_code == 415
    assert client.get("/api/v1/yield/jobs/" + "0" * 32).status_code == 404
    assert client.get("/api/v1/yield/jobs/../../token").status_code == 404
    assert client.get("/api/v1/yield/jobs/" + "0" * 32 + "/plot.png").status_code == 404
