"""Every bad request is a 4xx with a JSON body naming what is wrong; never a 500."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import sqlalchemy as sa
import tifffile
from fabguard.serve.bundle import VERSION
from PIL import Image

from tests.serve.conftest import TOKEN

INSPECT = "/api/v1/inspect"


def giant_png(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` (a decompression bomb's header)."""
    out = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(out, format="PNG")
    data = bytearray(out.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def refused(response, status: int, words: str):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in str(response.json()["detail"]), response.json()


@pytest.mark.parametrize("wafer_id", ["../etc/passwd", "..", "a/b", "a\\b", "WF.1", "%2e%2e", "-x", "", "a" * 65,
                                      "WF 1", "WF\x00", "ÄÖ"])
def test_wafer_ids_that_could_leave_the_folder_are_refused(client, wafer_images, wafer_id):
    response = client.post(INSPECT, params={"wafer_id": wafer_id, "inspection_point": 1},
                           content=wafer_images[0][0])
    refused(response, 422, "wafer_id")


@pytest.mark.parametrize("path", ["/api/v1/heatmaps/..%2F..%2Ftoken.png", "/api/v1/heatmaps/%2E%2E.png",
                                  "/api/v1/heatmaps/.token.png", "/api/v1/heatmaps/a.b.png",
                                  "/api/v1/heatmaps/..%5Ctoken.png", "/api/v1/heatmaps/unknown.png"])
def test_heatmap_names_cannot_reach_other_files(client, path):
    response = client.get(path)
    assert response.status_code in (404, 422) and "detail" in response.json()
    assert TOKEN not in response.text


@pytest.mark.parametrize("params", [{"wafer_id": "WF-1"}, {"inspection_point": 1},
                                    {"wafer_id": "WF-1", "inspection_point": -1},
                                    {"wafer_id": "WF-1", "inspection_point": "x"},
                                    {"wafer_id": "WF-1", "inspection_point": 10**7}])
def test_missing_or_bad_parameters(client, wafer_images, params):
    refused(client.post(INSPECT, params=params, content=wafer_images[0][0]), 422, "inspection_point"
            if "inspection_point" not in params or params["inspection_point"] != 1 else "wafer_id")


@pytest.mark.parametrize("body, kind, status, words", [
    (b"GIF89a" + b"\x00" * 50, "application/octet-stream", 415, "not a PNG or TIFF"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", 415, "PNG"),
    (b"II*\x00" + b"\xff" * 40, "image/tiff", 415, "TIFF"),
    (b"", "image/png", 422, "empty body"),
    (b"{}", "application/json", 415, "content type"),
])
def test_bytes_that_are_no_image(client, body, kind, status, words):
    refused(client.post(INSPECT, params={"wafer_id": "WF-1", "inspection_point": 1}, content=body,
                        headers={"content-type": kind}), status, words)


def test_truncated_png_is_415(client, wafer_images):
    body = wafer_images[0][0]
    refused(client.post(INSPECT, params={"wafer_id": "WF-1", "inspection_point": 1}, content=body[:len(body) // 2]),
            415, "image")


def test_decompression_bomb_refused_from_its_header(client):
    refused(client.post(INSPECT, params={"wafer_id": "WF-1", "inspection_point": 1},
                        content=giant_png(100_000, 100_000)), 413, "pixels")
    out = io.BytesIO()
    tifffile.imwrite(out, np.zeros((4, 4), np.uint8))
    assert client.post(INSPECT, params={"wafer_id": "WF-1", "inspection_point": 1},
                       content=out.getvalue()).status_code == 200


def test_many_page_tiff_refused_without_walking_its_pages(client, monkeypatch):
    """A TIFF of many tiny pages is refused (415) after reading at most its first two pages: counting them
    walks the whole chain, seconds of CPU for a crafted file of 150,000 pages."""
    out = io.BytesIO()
    with tifffile.TiffWriter(out) as writer:  # the first page tagged LSM and compressed: tifffile's LSM reader
        for i in range(200):                 # would walk every page on opening the file
            writer.write(np.zeros((2, 2), np.uint8), contiguous=False, compression="zlib" if i == 0 else None,
                         extratags=[(34412, "B", 512, b"\0" * 512, True)] if i == 0 else None)
    read = []
    for kind in (tifffile.TiffPage, tifffile.TiffFrame):  # pages, and the frames the LSM reader makes of them
        monkeypatch.setattr(kind, "__init__", lambda self, *a, _init=kind.__init__, **k: read.append(1) or
                            _init(self, *a, **k))
    refused(client.post(INSPECT, params={"wafer_id": "WF-1", "inspection_point": 1}, content=out.getvalue(),
                        headers={"content-type": "image/tiff"}), 415, "multi-page TIFF")
    assert 1 <= len(read) <= 2


def test_body_over_the_limit_is_413(settings, wafer_images, monkeypatch):
    from fastapi.testclient import TestClient

    from fabguard.serve import app

    settings.max_body_bytes = 2048
    monkeypatch.setattr(app, "MAX_ARTIFACT", 4096)  # a model registration's own limit, made small
    with TestClient(app.create_app(settings)) as client:
        refused(client.post(INSPECT, params={"wafer_id": "WF-1", "inspection_point": 1},
                            content=b"\x89PNG" + b"\x00" * 4096), 413, "limit")

        def chunks():  # no Content-Length: the limit holds while streaming
            for _ in range(10):
                yield b"\x00" * 1024
        refused(client.post(INSPECT, params={"wafer_id": "WF-1", "inspection_point": 1}, content=chunks()),
                413, "limit")
        # every body: JSON and tables too, with or without a Content-Length, before the route reads them
        records = json.dumps({"records": [{"product": f"P{i}", "basic": 0.5} for i in range(200)]}).encode()
        for path, body, kind in (("/api/v1/route", records, "application/json"),
                                 ("/api/v1/experiments", records, "application/json"),
                                 ("/api/v1/yield/jobs", b"batch,step,machine,pieces_in,defects\n" * 100, "text/csv")):
            refused(client.post(path, content=body, headers={"content-type": kind}), 413, "limit is 2048")
            refused(client.post(path, content=iter([body]), headers={"content-type": kind}), 413,
                    "over the limit of 2048 bytes")
        form = b'--XX\r\nContent-Disposition: form-data; name="artifact"; filename="m.onnx"\r\n\r\n' + b"\0" * 8192
        for body in (form, iter([form])):  # a registration, streamed past its own limit too
            refused(client.post("/api/v1/models", content=body, headers={
                "content-type": "multipart/form-data; boundary=XX", "Authorization": f"Bearer {TOKEN}"}), 413, "4096")


@pytest.mark.parametrize("headers, words", [({}, "bearer token is required"),
                                            ({"Authorization": "Bearer wrong"}, "wrong bearer token"),
                                            ({"Authorization": "Basic abc"}, "bearer token is required")])
def test_write_endpoints_need_the_token(client, headers, words):
    for method, url in (("POST", "/api/v1/models/rollback"), ("POST", f"/api/v1/models/{VERSION}/promote"),
                        ("POST", "/api/v1/models")):
        refused(client.request(method, url, headers=headers), 401, words)


def test_registry_refusals(client, second_model, tmp_path):
    from fabguard.client import ServiceError

    auth = {"Authorization": f"Bearer {TOKEN}"}
    refused(client.post("/api/v1/models/nope-v9.9.9/promote", headers=auth), 404, "not registered")
    refused(client.post("/api/v1/models/Bad_Version/promote", headers=auth), 422, "version")
    refused(client.post("/api/v1/models/rollback", headers=auth), 409, "only version ever promoted")
    artifact, report = second_model
    form = {"version": "pca-small-v0.1.0"}
    with open(artifact, "rb") as f:
        refused(client.post("/api/v1/models", headers=auth, data={**form, "report": "{"},
                            files={"artifact": ("m.onnx", f)}), 422, "report")
    refused(client.post("/api/v1/models", headers=auth, data={**form, "report": '{"auroc": 1}'},
                        files={"artifact": ("m.onnx", b"not onnx")}), 422, "auprc")
    refused(client.post("/api/v1/models", headers=auth, data={**form, "report": '{"auroc": 1, "auprc": 1, '
                                                                   '"fnr_at_fpr5": 0, "latency_ms_p50": 1}'},
                        files={"artifact": ("m.onnx", b"not onnx")}), 422, "not an ONNX model")
    weak = {**report, "auroc": 0.8}
    with open(artifact, "rb") as f:
        assert client.post("/api/v1/models", headers=auth, data={**form, "report": __import__("json").dumps(weak)},
                           files={"artifact": ("m.onnx", f)}).status_code == 201
    refused(client.post("/api/v1/models/pca-small-v0.1.0/promote", headers=auth), 409, "auroc = 0.8")
    with open(artifact, "rb") as f:
        refused(client.post("/api/v1/models", headers=auth, data={**form, "report": __import__("json").dumps(report)},
                            files={"artifact": ("m.onnx", f)}), 409, "already registered")
    assert client.get("/readyz").json()["model_version"] == VERSION
    with pytest.raises(ServiceError) as info:
        from fabguard.client import Client

        Client(token=TOKEN, http=client).promote("pca-small-v0.1.0")
    assert info.value.status == 409


def test_database_outage_is_503_and_recovers(app_client, api, wafer_images):
    """The log is unreachable: the inspection is refused with 503 (nothing logged, safe to resend)."""
    client, app = app_client
    service = app.state.service
    working = service.engine
    service.engine = sa.create_engine("sqlite:////nonexistent-folder/fabguard.db")
    try:
        refused(client.post(INSPECT, params={"wafer_id": "WF-1", "inspection_point": 1},
                            content=wafer_images[0][0]), 503, "unavailable")
        assert client.get("/api/v1/inspections").status_code == 503
        assert "fabguard_log_write_errors_total 2.0" in client.get("/metrics").text
    finally:
        service.engine = working
    assert api.inspect(wafer_images[0][0], "WF-1", 1)["decision"] == "PASS"


def test_registration_checks_the_token_before_reading_the_upload(live_server):
    """Without the token, a model upload is refused as soon as its headers arrive: the server does not take
    in the body first (it may be 2 GiB). Sent by hand: headers declaring 100 MB, then a few bytes."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(live_server)
    with socket.create_connection((url.hostname, url.port), timeout=10) as connection:
        connection.sendall(b"POST /api/v1/models HTTP/1.1\r\nHost: fabguard\r\nContent-Length: 100000000\r\n"
                           b"Content-Type: multipart/form-data; boundary=XX\r\n\r\n--XX\r\n")
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"bearer token is required" in answer
