"""fabguard.client: retries on 503 only, errors as ServiceError, timeouts."""

from __future__ import annotations

import httpx
import pytest

from fabguard.client import Client, ServiceError


def counting(statuses):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        status = statuses[min(len(calls) - 1, len(statuses) - 1)]
        return httpx.Response(status, json={"detail": f"status {status}"} if status >= 400 else {"ok": 1},
                              headers={"Retry-After": "0"})
    return handler, calls


@pytest.mark.parametrize("statuses, calls_made, ok", [([503, 503, 200], 3, True), ([503] * 9, 4, False),
                                                      ([500, 200], 1, False), ([502, 200], 1, False),
                                                      ([429, 200], 1, False), ([200], 1, True)])
def test_retries_on_503_only(statuses, calls_made, ok):
    handler, calls = counting(statuses)
    api = Client(token="t", retries=3, backoff=0.001,
                 http=httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler)))
    if ok:
        assert api.inspect(b"x", "WF-1", 1) == {"ok": 1}
    else:
        with pytest.raises(ServiceError) as info:
            api.inspect(b"x", "WF-1", 1)
        assert info.value.status == statuses[0 if statuses[0] != 503 else -1]
    assert len(calls) == calls_made
    assert all(c.headers["Authorization"] == "Bearer t" for c in calls)
    assert calls[0].url.params["wafer_id"] == "WF-1"


def test_timeout_is_raised():
    def slow(request):
        raise httpx.ReadTimeout("timed out", request=request)

    api = Client(http=httpx.Client(base_url="http://service", transport=httpx.MockTransport(slow)))
    with pytest.raises(httpx.ReadTimeout):
        api.models()


def test_default_client_has_a_timeout():
    with Client("http://127.0.0.1:9", timeout=1.5) as api:
        assert api.http.timeout.read == 1.5
