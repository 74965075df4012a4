"""Property-based requests generated from the OpenAPI schema: the service never answers 5xx."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402


def test_no_server_errors_for_generated_requests(client):
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    failures = []
    for result in schema.get_all_operations():
        op = result.ok()

        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            body = None if case.body is schemathesis.core.NOT_SET else case.body
            r = client.request(case.method, case.formatted_path, json=body, params=case.query)
            if r.status_code >= 500:
                failures.append((case.method, case.formatted_path, body, r.status_code, r.text[:200]))

        check()
    assert not failures, failures[:3]
    assert client.get("/readyz").status_code == 200
