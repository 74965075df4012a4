"""Operations endpoints, docs, demo page, CORS, request ids, metrics and concurrency."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor


def metric(text: str, name: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M):
        total += float(m.group(1))
    return total


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok", "detail": None}
    assert client.get("/readyz").json()["status"] == "ready"


def test_info(client):
    info = client.get("/info").json()
    assert info["model"]["name"] == "tiny" and info["vocab_size"] == info["config"]["vocab_size"]
    assert info["device"] == "cpu" and info["version"]
    assert info["limits"] == {"max_turns": 20, "max_turn_chars": 1000, "max_n": 16, "max_tokens": 12,
                              "max_body_bytes": 256 * 1024, "request_timeout_s": 30.0}
    assert info["config"]["latent_dim"] == 8 and info["torch_threads"] == 1


def test_openapi_shows_limits(client):
    spec = client.get("/openapi.json").json()
    req = spec["components"]["schemas"]["RespondRequest"]["properties"]
    assert req["n"]["maximum"] == 16 and req["context"]["maxItems"] == 20
    assert "/respond" in spec["paths"] and "/readyz" in spec["paths"]


def test_openapi_bounds_candidates_by_the_setting(make_client):
    """candidates is at most max_candidates, in the schema as at run time."""
    with make_client(max_candidates=40) as c:
        field = c.get("/openapi.json").json()["components"]["schemas"]["RespondRequest"]["properties"]["candidates"]
        bounds = next(s for s in field["anyOf"] if s.get("type") == "integer")
        assert (bounds["minimum"], bounds["maximum"]) == (1, 40)
        assert c.post("/respond", json={"context": ["hi"], "n": 2, "candidates": 40}).json()["candidates"] >= 40
        r = c.post("/respond", json={"context": ["hi"], "n": 2, "candidates": 41})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "candidates"]


def test_docs_work_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    for src in re.findall(r'(?:src|href)="(/[^"]+)"', page.text):
        assert client.get(src).status_code == 200, src


def test_demo_page(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="context"' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_demo_page_has_an_inline_icon(client):
    """The page names its icon in place (an SVG data URL), so a browser never asks for /favicon.ico (a 404)."""
    import xml.etree.ElementTree as ET
    from urllib.parse import unquote

    page = client.get("/").text
    links = re.findall(r'<link rel="icon" type="image/svg\+xml" href="data:image/svg\+xml,([^"]+)">', page)
    assert len(links) == 1
    svg = ET.fromstring(unquote(links[0]))
    assert svg.tag == "{http://www.w3.org/2000/svg}svg" and len(svg)


def test_request_id_header(client):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/healthz", headers={"X-Request-ID": "bad id\twith junk"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert client.get("/nowhere").headers["x-request-id"]


def test_access_log_has_request_id(client, caplog):
    caplog.set_level("INFO", logger="app.access")
    r = client.post("/respond", json={"context": ["hi"], "n": 1})
    assert any(r.headers["x-request-id"] in m and "/respond 200" in m for m in caplog.messages)


def test_cors_off_by_default(client):
    r = client.options("/respond", headers={"Origin": "http://elsewhere.example",
                                            "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins_setting(make_client):
    with make_client(cors_origins="http://a.example, http://b.example") as c:
        r = c.options("/respond", headers={"Origin": "http://b.example", "Access-Control-Request-Method": "POST"})
        assert r.headers["access-control-allow-origin"] == "http://b.example"
        r = c.post("/respond", json={"context": ["hi"], "n": 1}, headers={"Origin": "http://c.example"})
        assert "access-control-allow-origin" not in r.headers


def test_metrics(client):
    client.post("/respond", json={"context": ["hi"], "n": 3})
    client.post("/respond", json={"context": []})
    text = client.get("/metrics").text
    assert metric(text, "dialog_http_requests_total") >= 2
    assert 'method="POST",route="/respond",status="200"' in text
    assert 'method="POST",route="/respond",status="422"' in text
    assert metric(text, "dialog_replies_total") >= 3
    assert metric(text, "dialog_queue_wait_seconds_count") >= 1
    assert metric(text, "dialog_http_request_duration_seconds_count") >= 2
    assert metric(text, "dialog_ready") == 1


def test_metrics_count_empty_replies_dropped_apart_from_duplicates(client, empty_rows):
    empty_rows(2)  # every other row comes out empty
    bodies = [client.post("/respond", json={"context": ["hi"], "n": 3, "seed": seed}).json() for seed in (1, 2)]
    text = client.get("/metrics").text  # the warm-up is not a request: only these two count
    empty = sum(b["empty_dropped"] for b in bodies)
    assert metric(text, "dialog_empty_dropped_total") == empty > 0
    assert metric(text, "dialog_duplicates_dropped_total") == sum(b["duplicates_dropped"] for b in bodies)


def test_readme_lists_every_metric(client):
    """README's Operations paragraph names every metric /metrics exports (counters by their _total name)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    ops = next(p for p in readme.split("\n\n") if p.startswith("Operations:"))
    for family in client.app.state.runtime.metrics.registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}`" in ops, name


def test_unknown_paths_share_one_label(client):
    for i in range(5):
        client.get(f"/random-{i}")
    text = client.get("/metrics").text
    assert "random-" not in text and 'route="other"' in text


def test_metrics_registry_is_per_app(make_client):
    with make_client() as a, make_client() as b:
        a.get("/healthz")
        assert 'route="/healthz"' not in b.get("/metrics").text


def test_many_concurrent_requests_are_batched(make_client):
    with make_client(max_wait_ms=50, max_batch_rows=64) as c:
        def call(i: int):
            return c.post("/respond", json={"context": ["hi there", f"how are you {i}"], "n": 1, "seed": i,
                                            "rerank": False})  # one row per request

        before = c.get("/metrics").text  # after the warm-up
        with ThreadPoolExecutor(32) as pool:
            responses = list(pool.map(call, range(32)))
        assert all(r.status_code == 200 for r in responses)
        assert [r.json()["seed"] for r in responses] == list(range(32))
        text = c.get("/metrics").text
        calls = metric(text, "dialog_batch_rows_count") - metric(before, "dialog_batch_rows_count")
        rows = metric(text, "dialog_batch_rows_sum") - metric(before, "dialog_batch_rows_sum")
        # 32 rows, and a few more where an empty reply was drawn again
        assert rows >= 32 and calls < 32  # some decode calls served several requests
        assert metric(text, 'dialog_batch_rows_bucket{le="1.0"}') < metric(text, "dialog_batch_rows_count")
