"""Every error status of /respond: 422, 413, 429, 503, 504, 401, 500 (isolated), and startup failures."""
from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

import model.decoding
from app.engine import Engine
from app.main import create_app
from model.bundle import DEFAULT_BUNDLE, BundleError

OK = {"context": ["hi there"], "n": 2}


@pytest.mark.parametrize("change, loc", [
    ({"context": []}, ["body", "context"]),
    ({"context": None}, ["body", "context"]),
    ({"context": "hi"}, ["body", "context"]),
    ({"context": ["  "]}, ["body", "context"]),
    ({"context": [""]}, ["body", "context", 0]),
    ({"context": ["x" * 1001]}, ["body", "context", 0]),
    ({"context": ["hi"] * 21}, ["body", "context"]),
    ({"context": ["\u200b\u200b"]}, ["body", "context", 0]),  # empty once normalised
    ({"n": 0}, ["body", "n"]),
    ({"n": 17}, ["body", "n"]),
    ({"n": "many"}, ["body", "n"]),
    ({"seed": -1}, ["body", "seed"]),
    ({"seed": 2**63 - 1}, ["body", "seed"]),
    ({"latent_temperature": -0.1}, ["body", "latent_temperature"]),
    ({"strategy": "beam"}, ["body", "strategy"]),
    ({"temperature": 0}, ["body", "temperature"]),
    ({"top_k": -1}, ["body", "top_k"]),
    ({"top_p": 0}, ["body", "top_p"]),
    ({"top_p": 1.5}, ["body", "top_p"]),
    ({"max_tokens": 0}, ["body", "max_tokens"]),
    ({"max_tokens": 65}, ["body", "max_tokens"]),  # over the configured maximum
    ({"max_tokens": 13}, ["body", "max_tokens"]),  # over the model's max_decode_len (12)
    ({"latents": []}, ["body", "latents"]),
    ({"latents": [[0.0] * 7]}, ["body", "latents", 0]),
    ({"latents": [[0.0] * 8] * 17}, ["body", "latents"]),
    ({"dedupe": "perhaps"}, ["body", "dedupe"]),
    ({"unknown_field": 1}, ["body", "unknown_field"]),
    ({"n": "5"}, ["body", "n"]),  # strict types: a string is not a number
    ({"n": True}, ["body", "n"]),  # nor is a boolean
    ({"dedupe": 1}, ["body", "dedupe"]),
    ({"latents": [[0.0] * 8] * 3, "n": 5}, ["body", "n"]),  # n given must match the codes
    ({"latents": [[1e30] + [0.0] * 7]}, ["body", "latents", 0, 0]),  # far outside any prior
    ({"candidates": 1, "n": 2}, ["body", "candidates"]),
])
def test_invalid_input_422(client, change, loc):
    body = {**OK, **change}
    if "latents" in change and "n" not in change:
        del body["n"]
    r = client.post("/respond", json=body)
    assert r.status_code == 422, r.text
    locs = [e["loc"][: len(loc)] for e in r.json()["detail"]]
    assert loc in locs


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_latents_422(client, value):
    raw = '{"context": ["hi"], "latents": [[%s, 0, 0, 0, 0, 0, 0, 0]]}' % value
    r = client.post("/respond", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][:3] == ["body", "latents", 0]


def test_invalid_json_422(client):
    r = client.post("/respond", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    # a body that is not even UTF-8 gets the same answer, not Starlette's bare 400
    r = client.post("/respond", content=b'{"context": ["\xff\xfe"]}', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid" and "UTF-8" in r.json()["detail"][0]["msg"]


JSON = {"content-type": "application/json"}
# JSON's escape of a lone surrogate: a Python string holds it, UTF-8 cannot encode it
SURROGATE = "\\ud800"


@pytest.mark.parametrize("raw, loc, echoed", [
    ('{"context": ["%s hello"]}' % SURROGATE, ["body", "context", 0], "\\ud800 hello"),
    ('{"context": ["hi"], "strategy": "%s"}' % SURROGATE, ["body", "strategy"], "\\ud800"),
    ('{"context": ["hi"], "n": "%s"}' % SURROGATE, ["body", "n"], "\\ud800"),
    ('{"context": ["hi"], "%s": 1}' % SURROGATE, ["body"], "\\ud800"),  # as a field name
], ids=["turn", "strategy", "wrong-type", "field-name"])
def test_lone_surrogate_422_echoes_it_escaped(client, raw, loc, echoed):
    """The 422 echoes the input; a lone surrogate in it is written out as its escape, not a 500."""
    r = client.post("/respond", content=raw.encode(), headers=JSON)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/json"
    err = next(e for e in r.json()["detail"] if e["loc"] == loc)
    assert err["input"] == echoed


def test_encodable():
    from app.errors import encodable

    bad = "\ud800 x"
    assert encodable({"a": [bad, ("b", bad)], bad: 1, "n": 2.5}) == {
        "a": ["\\ud800 x", ("b", "\\ud800 x")], "\\ud800 x": 1, "n": 2.5}
    ok = {"a": ["h\u00e9llo \U0001f600"]}
    assert encodable(ok) == ok


def test_an_unexpected_error_gets_json_with_the_request_id(make_settings, monkeypatch):
    """The last resort: a handler that fails still answers in the API's shape, with the id to report."""
    import app.errors

    def broken(errors):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.errors, "validation_body", broken)
    with TestClient(create_app(make_settings(warmup=False)), raise_server_exceptions=False) as c:
        r = c.post("/respond", json={"n": 0})
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json()["detail"].startswith("internal error (request id ")


@pytest.mark.parametrize("raw", ["[" * 100_000 + "]" * 100_000,
                                 '{"context": %s}' % ("[" * 100_000 + "]" * 100_000)], ids=["body", "field"])
def test_json_nested_too_deeply_422_says_so(client, raw):
    r = client.post("/respond", content=raw.encode(), headers=JSON)
    assert r.status_code == 422, r.text
    err = r.json()["detail"][0]
    assert err["type"] == "json_invalid" and "nested too deeply" in err["msg"] and "UTF-8" not in err["msg"]


def test_huge_turn_gives_small_error_body(client):
    r = client.post("/respond", json={"context": ["word " * 20_000], "n": 0})  # 100 kB
    assert r.status_code == 422
    assert len(r.content) < 2000
    err = next(e for e in r.json()["detail"] if e["loc"] == ["body", "context", 0])
    assert err["type"] == "string_too_long" and "100000 characters" in err["input"]


def test_many_turns_gives_small_error_body(client):
    r = client.post("/respond", json={"context": ["y" * 999] * 200})
    assert r.status_code == 422
    assert len(r.content) < 3000


def test_body_too_large_413(make_client):
    with make_client(max_body_bytes=2048) as c:
        big = json.dumps({"context": ["a" * 900, "b" * 900, "c" * 900]}).encode()
        r = c.post("/respond", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "x-request-id" in r.headers

        def chunks():  # no Content-Length: the streamed body is counted
            for _ in range(10):
                yield b" " * 500
        r = c.post("/respond", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/respond", json=OK).status_code == 200


class SlowDecode:
    """Wraps model.decoding.decode with a delay that a test can change."""

    def __init__(self, monkeypatch, delay: float = 0.0):
        self.delay = delay
        self.orig = model.decoding.decode
        monkeypatch.setattr(model.decoding, "decode", self)

    def __call__(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.orig(*args, **kwargs)


def test_queue_full_429_with_retry_after(make_client, monkeypatch):
    with make_client(queue_size=1) as c:
        slow = SlowDecode(monkeypatch, delay=0.5)
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=c.post("/respond", json=OK)))
        t.start()
        engine = c.app.state.runtime.engine
        deadline = time.monotonic() + 5
        while engine.batcher.admitted < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        r = c.post("/respond", json=OK)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        t.join()
        assert first["r"].status_code == 200
        slow.delay = 0
        assert c.post("/respond", json=OK).status_code == 200


def test_a_full_queue_refuses_all(make_client):
    with make_client(warmup=False) as c:
        c.app.state.runtime.engine.batcher.queue_size = 0  # admits nothing (the setting is at least 1)
        r = c.post("/respond", json=OK)
        assert r.status_code == 429 and "retry-after" in r.headers


def test_timeout_504_and_the_service_recovers(make_client, monkeypatch):
    with make_client(request_timeout_s=0.3) as c:
        slow = SlowDecode(monkeypatch, delay=1.0)
        r = c.post("/respond", json=OK)
        assert r.status_code == 504
        slow.delay = 0
        time.sleep(1.1)
        assert c.post("/respond", json={**OK, "rerank": False}).status_code == 200
        assert c.app.state.runtime.engine.batcher.admitted == 0


def test_503_before_ready(make_client, monkeypatch):
    release = threading.Event()
    orig = Engine.warmup

    def blocked_warmup(self):
        release.wait(10)
        return orig(self)

    monkeypatch.setattr(Engine, "warmup", blocked_warmup)
    with make_client(ready=False) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "warming up" in r.json()["detail"]
        r = c.post("/respond", json=OK)
        assert r.status_code == 503 and "retry-after" in r.headers
        assert c.get("/healthz").status_code == 200
        release.set()
        deadline = time.monotonic() + 5
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.get("/readyz").json()["status"] == "ready"
        assert c.post("/respond", json=OK).status_code == 200


def test_503_while_draining(client):
    client.app.state.runtime.start_draining()
    r = client.get("/readyz")
    assert r.status_code == 503 and "draining" in r.json()["detail"]
    assert client.post("/respond", json=OK).status_code == 503
    assert client.get("/healthz").status_code == 200


def test_draining_lets_in_flight_requests_finish(make_client, monkeypatch):
    with make_client(drain_timeout_s=5) as c:
        SlowDecode(monkeypatch, delay=0.3)
        out: dict = {}
        t = threading.Thread(target=lambda: out.update(r=c.post("/respond", json=OK)))
        t.start()
        engine = c.app.state.runtime.engine
        while engine.batcher.admitted < 1:
            time.sleep(0.005)
        c.app.state.runtime.start_draining()
        assert c.post("/respond", json=OK).status_code == 503
        t.join()
        assert out["r"].status_code == 200


def test_api_key(make_client, caplog):
    with make_client(api_key="s3cret-key") as c:
        r = c.post("/respond", json=OK)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/respond", json=OK, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/respond", json=OK, headers={"Authorization": "Basic s3cret-key"}).status_code == 401
        assert c.post("/respond", json=OK, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert "s3cret-key" not in c.get("/info").text
        assert "s3cret-key" not in repr(c.app.state.runtime.settings)
    assert "s3cret-key" not in caplog.text


def test_no_api_key_needed_by_default(client):
    assert client.post("/respond", json=OK, headers={"Authorization": "Bearer anything"}).status_code == 200


def test_error_in_one_request_spares_the_others(make_client, monkeypatch):
    """A decode that fails for one request's rows fails that request only, even inside a shared batch."""
    orig = model.decoding.decode

    def fragile(m, cond, z, *args, **kwargs):
        if (z == 42.0).all(dim=1).any():
            raise RuntimeError("poisoned row")
        return orig(m, cond, z, *args, **kwargs)

    with make_client(max_wait_ms=100) as c:
        monkeypatch.setattr(model.decoding, "decode", fragile)
        results: dict = {}

        def call(name, body):
            results[name] = c.post("/respond", json=body)

        threads = [threading.Thread(target=call, args=(f"ok{i}", {**OK, "seed": i})) for i in range(4)]
        threads.append(threading.Thread(target=call, args=("bad", {"context": ["hi there"], "latents": [[42.0] * 8]})))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["bad"].status_code == 500
        assert "request id" in results["bad"].json()["detail"]
        assert all(results[f"ok{i}"].status_code == 200 for i in range(4))
        assert c.get("/healthz").status_code == 200


def test_missing_bundle_fails_startup(make_settings, tmp_path):
    app = create_app(make_settings(bundle=tmp_path / "nope"))
    with pytest.raises(BundleError, match="nope.*bundle folder not found"):
        with TestClient(app):
            pass


def test_missing_default_bundle_names_it(make_settings, monkeypatch, tmp_path):
    """Without a bundle setting the service serves the default one; when that is not installed the error
    names it and the setting to use (the default's folder is moved aside for the test)."""
    import app.main

    missing = tmp_path / "pretrained" / DEFAULT_BUNDLE.name
    monkeypatch.setattr(app.main, "DEFAULT_BUNDLE", missing)
    app_ = create_app(make_settings(bundle=None))
    with pytest.raises(BundleError, match=f"{DEFAULT_BUNDLE.name}.*DIALOG_BUNDLE"):
        with TestClient(app_):
            pass


def test_body_not_declared_json_gets_415(client):
    r = client.post("/respond", content=json.dumps(OK), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    r = client.post("/respond", content=json.dumps(OK))  # no Content-Type at all
    assert r.status_code == 415
    ok = client.post("/respond", content=json.dumps(OK), headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_max_tokens_schema_states_the_models_limit(client):
    """The tiny model decodes at most 12 tokens: the schema says 12, so /docs and behaviour agree."""
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RespondRequest"]
    limit = schema["properties"]["max_tokens"]["anyOf"][0]["maximum"]
    assert limit == 12
    assert client.post("/respond", json={**OK, "max_tokens": 12}).status_code == 200
    assert client.post("/respond", json={**OK, "max_tokens": 13}).status_code == 422
