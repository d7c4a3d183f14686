"""schemathesis against the OpenAPI schema of a live server: no answer is a 500 (bounded run)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.serve.conftest import TOKEN

EXAMPLES = 20  # per operation; the whole run stays under ~30 s on 2 shared cores


def test_no_request_gets_a_server_error(live_server):
    """Every operation, with and without the token (so write endpoints are reached past the 401)."""
    schema = schemathesis.openapi.from_url(f"{live_server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    seen = []
    for operation in operations:
        @given(operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
                response = case.call(headers=headers, timeout=30)
                seen.append(response.status_code)
                assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)
                if response.status_code >= 400:
                    assert "detail" in response.json(), response.text

        check()
    assert len(seen) >= 2 * len(operations) and any(s < 300 for s in seen) and any(400 <= s < 500 for s in seen)
