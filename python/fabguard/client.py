"""Python client of ``fabguard serve``, for MES integrators and inspection PCs.

Timeouts on every call. Retries only on 503 (the service is starting, or its log database is briefly
away: nothing was logged, so sending again cannot log an inspection twice), with exponential backoff and
the server's ``Retry-After`` as a floor. Any other error answer raises :class:`ServiceError` with the
status and the service's message; connection errors propagate as httpx raises them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx


class ServiceError(RuntimeError):
    """An error answer of the service: ``status`` and ``detail`` (what the service says is wrong)."""

    def __init__(self, status: int, detail):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class Client:
    """``Client("http://127.0.0.1:8000", token=...)``; ``http`` may be any ``httpx.Client`` (e.g. FastAPI's
    TestClient), then ``base_url`` and ``timeout`` are its own."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 10.0,
                 retries: int = 3, backoff: float = 0.1, http: httpx.Client | None = None):
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self.token, self.retries, self.backoff = token, retries, backoff

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, url: str, **kwargs):
        headers = kwargs.pop("headers", {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.retries + 1):
            response = self.http.request(method, url, headers=headers, **kwargs)
            if response.status_code != 503 or attempt == self.retries:
                break
            floor = float(response.headers.get("retry-after", "0") or 0)
            time.sleep(max(self.backoff * 2 ** attempt, min(floor, 5.0)))
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except (json.JSONDecodeError, AttributeError):
                detail = response.text
            raise ServiceError(response.status_code, detail)
        return response

    # --- inspection ------------------------------------------------------------------------------------
    def inspect(self, image: bytes | str | os.PathLike, wafer_id: str, inspection_point: int) -> dict:
        """Score one PNG or TIFF (bytes or a file); the inspection is logged when this returns."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        return self._call("POST", "/api/v1/inspect", content=data,
                          params={"wafer_id": wafer_id, "inspection_point": inspection_point},
                          headers={"Content-Type": "application/octet-stream"}).json()

    def heatmap(self, heatmap_url: str) -> bytes:
        return self._call("GET", heatmap_url).content

    def inspection(self, inspection_id: str) -> dict:
        return self._call("GET", f"/api/v1/inspections/{inspection_id}").json()

    def inspections(self, wafer_id: str | None = None, decision: str | None = None, since: str | None = None,
                    limit: int = 100) -> list[dict]:
        params = {k: v for k, v in (("wafer_id", wafer_id), ("decision", decision), ("since", since),
                                    ("limit", limit)) if v is not None}
        return self._call("GET", "/api/v1/inspections", params=params).json()

    # --- models ----------------------------------------------------------------------------------------
    def models(self) -> list[dict]:
        return self._call("GET", "/api/v1/models").json()

    def register(self, artifact: str | os.PathLike, version: str, report: dict) -> dict:
        with open(artifact, "rb") as f:
            return self._call("POST", "/api/v1/models", data={"version": version, "report": json.dumps(report)},
                              files={"artifact": (Path(artifact).name, f, "application/octet-stream")}).json()

    def promote(self, version: str, force: bool = False) -> dict:
        return self._call("POST", f"/api/v1/models/{version}/promote", params={"force": force}).json()

    def rollback(self) -> dict:
        return self._call("POST", "/api/v1/models/rollback").json()

    # --- shadow and canary -----------------------------------------------------------------------------
    def start_experiment(self, candidate: str, mode: str, share: float | None = None) -> dict:
        """Start a ``shadow`` or ``canary`` phase of a registered candidate."""
        body = {"candidate": candidate, "mode": mode, **({"share": share} if share is not None else {})}
        return self._call("POST", "/api/v1/experiments", json=body).json()

    def stop_experiment(self, experiment_id: int) -> dict:
        return self._call("POST", f"/api/v1/experiments/{experiment_id}/stop").json()

    def experiment(self, experiment_id: int) -> dict:
        return self._call("GET", f"/api/v1/experiments/{experiment_id}").json()

    def compare(self, experiment_id: int) -> dict:
        """The candidate against production: rates, tests, reviewed-label figures, recommendation."""
        return self._call("GET", f"/api/v1/experiments/{experiment_id}/report").json()

    def events(self, kind: str | None = None, limit: int = 100) -> list[dict]:
        params = {"limit": limit, **({"kind": kind} if kind else {})}
        return self._call("GET", "/api/v1/events", params=params).json()

    # --- review and monitoring -------------------------------------------------------------------------
    def review_queue(self, inspector: str, limit: int = 20) -> dict:
        return self._call("GET", "/api/v1/review/queue", params={"inspector": inspector, "limit": limit}).json()

    def label(self, inspection_id: str, inspector: str, label: str, defect_type: str | None = None) -> dict:
        body = {"inspector": inspector, "label": label, **({"defect_type": defect_type} if defect_type else {})}
        return self._call("POST", f"/api/v1/review/items/{inspection_id}/labels", json=body).json()

    def review_figures(self, **params) -> dict:
        """FNR, FPR, REJECT override and agreement with intervals (``since``, ``until``, ``version``, ``arm``)."""
        return self._call("GET", "/api/v1/review/figures", params=params).json()

    def drift(self) -> dict:
        return self._call("GET", "/api/v1/drift").json()

    # --- health ----------------------------------------------------------------------------------------
    def ready(self) -> bool:
        """True once the service has a model loaded and warmed."""
        return self.http.get("/readyz").status_code == 200
