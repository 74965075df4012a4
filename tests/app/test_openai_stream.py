"""Streaming on /v1/chat/completions (stream: true): the official openai client's streaming iterator and a raw
HTTP reader against a live server, the chunks against the same request unstreamed, every error as without
streaming, tokens streamed as they are decoded with reranking off, and a client that disconnects cancelling
its request."""
from __future__ import annotations

import json
import runpy
import socket
import sys
import threading
import time

import httpx
import pytest

import model.decoding
from app.openai_schemas import ChatCompletionChunk

USER = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you"}]
KEY = "sk-test-stream-5d1a"


def openai_client():
    """The official client, for the live-server tests only: without it the other tests still run."""
    return pytest.importorskip("openai", reason="the dev extra installs the openai client")


def body(**extra) -> dict:
    return {"model": "tiny", "messages": USER, **extra}


def events(raw: str) -> list[str]:
    """The data of each server-sent event, checking the framing: every event one ``data: `` line and a blank
    line, nothing else, the last ``[DONE]``."""
    assert raw.endswith("\n\n")
    blocks = raw[:-2].split("\n\n")
    assert all(len(b.splitlines()) == 1 and b.startswith("data: ") for b in blocks), blocks
    data = [b.removeprefix("data: ") for b in blocks]
    assert data[-1] == "[DONE]" and "[DONE]" not in data[:-1]
    return data[:-1]


def check_chunks(chunks: list[dict], unstreamed: dict, include_usage: bool) -> None:
    """The chunks say what the unstreamed completion of the same request says, in OpenAI's order."""
    for c in chunks:
        ChatCompletionChunk.model_validate(c)  # the documented shape, no field beyond it
        assert c["object"] == "chat.completion.chunk" and c["model"] == "tiny"
        assert c["id"] == chunks[0]["id"] and c["id"].startswith("chatcmpl-") and c["created"] == chunks[0]["created"]
        assert c["system_fingerprint"] == unstreamed["system_fingerprint"]
        assert ("usage" in c) == include_usage
    if include_usage:
        *chunks, last = chunks
        assert last["choices"] == [] and last["usage"] == unstreamed["usage"]
        assert all(c["usage"] is None for c in chunks)
    assert all(len(c["choices"]) == 1 for c in chunks)
    for key in ("seed", "candidates", "decoding", "ignored_messages"):  # the request's extensions, once
        assert chunks[0][key] == unstreamed[key] and all(key not in c for c in chunks[1:])
    by_index: dict[int, list[dict]] = {}
    for c in chunks:
        by_index.setdefault(c["choices"][0]["index"], []).append(c["choices"][0])
    assert list(by_index) == [c["index"] for c in unstreamed["choices"]]
    for want in unstreamed["choices"]:
        got = by_index[want["index"]]
        assert got[0]["delta"] == {"role": "assistant", "content": ""}  # role first
        assert all(g["delta"].keys() <= {"content"} for g in got[1:])
        assert "".join(g["delta"].get("content", "") for g in got) == want["message"]["content"]
        assert [g["finish_reason"] for g in got] == [None] * (len(got) - 1) + [want["finish_reason"]]
        assert (got[-1]["seed"], got[-1]["score"], got[-1].get("ranking")) == (want["seed"], want["score"],
                                                                               want["ranking"])
        assert all(g["logprobs"] is None for g in got)


def respond_unranked(c, n: int, seed: int, **extra) -> dict:
    """/respond's replies to USER with reranking and dedupe off: what token streaming (which never withdraws a
    choice, so never replaces a repeated one) returns, in another order (by score)."""
    r = c.post("/respond", json={"context": [m["content"] for m in USER], "n": n, "seed": seed, "rerank": False,
                                 "dedupe": False, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def check_token_chunks(chunks: list[dict], replies: list[dict], include_usage: bool) -> dict[int, list[dict]]:
    """Token streaming: the shape; per choice its role first, then content deltas, then its finish_reason with
    seed and score; choices numbered 0, 1, ... in the order they start; the request's extensions once, in the
    last finish chunk; the texts those of ``replies`` (the same request, unstreamed). Returns each choice's
    chunk choices."""
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
        assert c["id"] == chunks[0]["id"] and ("usage" in c) == include_usage
    if include_usage:
        *chunks, last = chunks
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == sum(r["tokens"] for r in replies)
    by_index: dict[int, list[dict]] = {}
    for c in chunks:
        (choice,) = c["choices"]
        by_index.setdefault(choice["index"], []).append(choice)
    assert list(by_index) == list(range(len(replies)))
    got = []
    for parts in by_index.values():
        assert parts[0]["delta"] == {"role": "assistant", "content": ""}
        assert all(p["delta"].keys() == {"content"} and p["delta"]["content"] for p in parts[1:-1])
        assert parts[-1]["delta"] == {} and [p["finish_reason"] for p in parts[:-1]] == [None] * (len(parts) - 1)
        got.append(("".join(p["delta"].get("content", "") for p in parts), parts[-1]["finish_reason"],
                    parts[-1]["seed"], parts[-1]["score"]))
    finish = {"eos": "stop", "length": "length"}
    assert sorted(got) == sorted((r["text"], finish[r["finish_reason"]], r["seed"], r["score"]) for r in replies)
    ends = [i for i, c in enumerate(chunks) if c["choices"][0]["finish_reason"] is not None]
    for key in ("seed", "candidates", "decoding", "ignored_messages"):
        assert [key in c for c in chunks] == [i == ends[-1] for i in range(len(chunks))], key
    assert chunks[ends[-1]]["decoding"]["rerank"] is False
    return by_index


# ----- the live server: the official client and a raw HTTP reader ----------------------------------------

def test_openai_client_streams_n_choices(make_server):
    openai = openai_client()
    url = make_server(max_batch_rows=1, max_wait_ms=0)  # batching off: the two requests decode alike
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    for extra in ({}, {"temperature": 0.9, "top_p": 0.95}):
        whole = client.chat.completions.create(model="tiny", messages=USER, n=3, seed=11, **extra)
        stream = client.chat.completions.create(model="tiny", messages=USER, n=3, seed=11, stream=True,
                                                stream_options={"include_usage": True}, **extra)
        assert isinstance(stream, openai.Stream)
        chunks = list(stream)
        assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
        texts: dict[int, str] = {}
        finish: dict[int, str | None] = {}
        roles: dict[int, str | None] = {}
        for c in chunks[:-1]:
            (choice,) = c.choices
            roles.setdefault(choice.index, choice.delta.role)
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            finish[choice.index] = choice.finish_reason
        assert roles == {0: "assistant", 1: "assistant", 2: "assistant"}
        assert texts == {c.index: c.message.content for c in whole.choices} and len(set(texts.values())) == 3
        assert finish == {c.index: c.finish_reason for c in whole.choices}
        assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
        assert all(c.usage is None for c in chunks[:-1]) and chunks[0].seed == 11  # extension field
        assert len({c.id for c in chunks}) == 1 and chunks[0].system_fingerprint == whole.system_fingerprint

    plain = list(client.chat.completions.create(model="tiny", messages=USER, n=2, seed=3, stream=True))
    assert plain[-1].choices[0].finish_reason is not None and all(c.usage is None for c in plain)

    # Reranking off: the tokens stream as they are decoded, the same replies as unstreamed.
    stream = client.chat.completions.create(model="tiny", messages=USER, n=3, seed=11, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"rerank": False})
    chunks = [c.model_dump(exclude_unset=True) for c in stream]
    with httpx.Client(base_url=url, timeout=30) as http:
        check_token_chunks(chunks, respond_unranked(http, 3, 11)["replies"], include_usage=True)


def test_openai_client_streaming_errors_are_the_unstreamed_ones(make_server):
    openai = openai_client()
    url = make_server(api_key=KEY)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
    cases = [(wrong, {}, openai.AuthenticationError, 401, None, "invalid_api_key"),
             (client, {"model": "gpt-4o"}, openai.NotFoundError, 404, "model", "model_not_found"),
             (client, {"n": 17}, openai.BadRequestError, 400, "n", "invalid_value"),
             (client, {"stream_options": {"include_obfuscation": True}}, openai.BadRequestError, 400,
              "stream_options.include_obfuscation", "unsupported_value")]
    for c, kwargs, kind, status, param, code in cases:
        with pytest.raises(kind) as e:
            c.chat.completions.create(**{"model": "tiny", "messages": USER, **kwargs}, stream=True)
        assert (e.value.status_code, e.value.param, e.value.code) == (status, param, code), kwargs


def test_raw_event_stream_framing(make_server):
    url = make_server()
    with httpx.Client(base_url=url, timeout=30) as http:
        whole = http.post("/v1/chat/completions", json=body(n=2, seed=5)).json()
        with http.stream("POST", "/v1/chat/completions",
                         json=body(n=2, seed=5, stream=True, stream_options={"include_usage": True})) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert r.headers["cache-control"] == "no-cache" and "content-length" not in r.headers
            assert r.headers["transfer-encoding"] == "chunked" and r.headers["x-request-id"]
            lines = list(r.iter_lines())
        raw = "".join(line + "\n" for line in lines)
        chunks = [json.loads(d) for d in events(raw)]
        assert len(chunks) == 2 * 3 + 1  # role, content, finish per choice; the usage chunk
        check_chunks(chunks, whole, include_usage=True)
        with http.stream("POST", "/v1/chat/completions", json=body(n=1, seed=5, stream=True)) as r:
            chunks = [json.loads(d) for d in events(r.read().decode())]
        check_chunks(chunks, http.post("/v1/chat/completions", json=body(n=1, seed=5)).json(), include_usage=False)


@pytest.fixture
def make_app(make_settings):
    from app.main import create_app

    return lambda **overrides: create_app(make_settings(**overrides))


def test_client_that_disconnects_cancels_its_request(make_app, monkeypatch):
    """A client that leaves before its replies are done: the request's future is cancelled and its place in
    the queue freed while its first decode still runs, and the batcher decodes none of its rows after that."""
    from harness.server import serve_in_thread

    app = make_app()
    release, entered = threading.Event(), threading.Event()
    with serve_in_thread(app, 20) as url:
        engine = app.state.runtime.engine
        futures, decoded = [], []  # each request's future; the futures of the rows of each decode call
        submit, decode = engine.submit_async, engine.pipeline.decode

        async def spy(req, client=""):
            futures.append(await submit(req, client))
            return futures[-1]

        def held(key, rows):
            decoded.append({r.job.future for r in rows})
            entered.set()
            release.wait(10)
            return decode(key, rows)

        monkeypatch.setattr(engine, "submit_async", spy)
        monkeypatch.setattr(engine.pipeline, "decode", held)
        payload = json.dumps(body(n=4, seed=1, stream=True)).encode()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            assert entered.wait(10)  # its first rows are being decoded
        (future,) = futures
        deadline = time.monotonic() + 10
        while not future.cancelled() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.cancelled() and engine.batcher.admitted == 0  # while its decode call still runs
        release.set()
        r = httpx.post(f"{url}/v1/chat/completions", json=body(n=2, seed=2), timeout=30)  # the server goes on
        assert r.status_code == 200 and len(futures) == 2
        assert [future in d for d in decoded].count(True) == 1 and any(futures[1] in d for d in decoded)
        metrics = httpx.get(f"{url}/metrics").text
        assert 'dialog_http_requests_total{method="POST",route="/v1/chat/completions",status="499"} 1.0' in metrics


def test_client_that_disconnects_mid_stream_stops_its_rows(make_app, monkeypatch):
    """Token streaming: a client that leaves after the first words cancels its request, and its rows leave the
    running decode call at its next step (finish reason "cancelled"), long before their length limit."""
    from harness.server import serve_in_thread
    from model.bundle import DEFAULT_BUNDLE

    app = make_app(bundle=DEFAULT_BUNDLE)
    steps, calls = [], []
    decode = model.decoding.decode

    def spy(*args, **kwargs):
        out = decode(*args, **kwargs)
        calls.append(out.finish_reason)
        return out

    with serve_in_thread(app, 20) as url:
        engine = app.state.runtime.engine
        step = engine.model.decode_step

        def slow(*args):
            steps.append(time.monotonic())
            time.sleep(0.05)
            return step(*args)

        monkeypatch.setattr(engine.model, "decode_step", slow)
        monkeypatch.setattr(model.decoding, "decode", spy)
        name = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        with httpx.Client(base_url=url, timeout=30) as http:
            with http.stream("POST", "/v1/chat/completions",
                             json=body(model=name, n=4, seed=3, stream=True, rerank=False)) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                        break  # the first words: leave
            left = time.monotonic()
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert calls, "the decode call did not end"
        (finish,) = calls
        assert "cancelled" in finish  # rows still running when the client left were stopped
        after = [t for t in steps if t > left]
        assert len(after) <= 3, f"{len(after)} decode steps ran after the client left"
        assert engine.batcher.admitted == 0


# ----- in process: errors, options, the documentation ------------------------------------------------------

def same_error(c, status: int, **extra) -> dict:
    """The request with stream: true gets the JSON error (status, headers, body) it gets without streaming."""
    plain = c.post("/v1/chat/completions", json=body(**extra))
    streamed = c.post("/v1/chat/completions", json=body(stream=True, **extra))
    for r in (plain, streamed):
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
    assert streamed.json()["error"] == plain.json()["error"] and set(plain.json()) == {"error"}
    assert ("retry-after" in streamed.headers) == ("retry-after" in plain.headers)
    return streamed.json()["error"]


@pytest.mark.parametrize("extra, param, code", [
    ({"n": 17}, "n", "invalid_value"),
    ({"n": "2"}, "n", "invalid_type"),
    ({"temperature": 2.5}, "temperature", "invalid_value"),
    ({"max_tokens": 13}, "max_tokens", "invalid_value"),
    ({"stop": ["\n"]}, "stop", "unsupported_value"),
    ({"tools": []}, "tools", "unknown_parameter"),
    ({"messages": [*USER, {"role": "assistant", "content": "fine"}]}, "messages.3.role", "invalid_value"),
    ({"messages": [{"role": "user", "content": "x" * 1001}]}, "messages.0.content", "invalid_value"),
    ({"model": "gpt-4o"}, "model", "model_not_found"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "invalid_type"),
    ({"stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation", "unsupported_value"),
    ({"stream_options": {"continuous_usage_stats": True}}, "stream_options.continuous_usage_stats",
     "unknown_parameter"),
])
def test_invalid_input_gets_the_unstreamed_error(client, extra, param, code):
    status = 404 if code == "model_not_found" else 400
    e = same_error(client, status, **extra)
    assert (e["param"], e["code"]) == (param, code)


def test_stream_options_need_stream(client):
    for stream in (False, None):
        r = client.post("/v1/chat/completions", json=body(stream=stream, stream_options={"include_usage": True}))
        assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
        assert "stream: true" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json=body(stream=True, stream_options={"include_obfuscation": False,
                                                                                 "include_usage": False}))
    assert r.status_code == 200 and "usage" not in json.loads(events(r.text)[0])


def test_api_key_queue_draining_timeout_and_no_reply_as_unstreamed(make_client, monkeypatch):
    with make_client(api_key=KEY) as c:
        assert same_error(c, 401)["code"] == "invalid_api_key"
    with make_client(warmup=False) as c:
        c.app.state.runtime.engine.batcher.queue_size = 0  # admits nothing (the setting is at least 1)
        assert same_error(c, 429)["type"] == "rate_limit_error"
    with make_client() as c:
        c.app.state.runtime.start_draining()
        assert same_error(c, 503)["code"] == "not_ready"

    decode = model.decoding.decode
    release = threading.Event()

    def slow(*args, **kwargs):
        release.wait(5)
        return decode(*args, **kwargs)

    with make_client(request_timeout_s=0.2) as c:
        monkeypatch.setattr(model.decoding, "decode", slow)
        try:
            assert same_error(c, 504)["code"] == "timeout"
        finally:
            release.set()

    def all_empty(*args, **kwargs):
        out = decode(*args, **kwargs)
        out.tokens = [[] for _ in out.tokens]
        return out

    monkeypatch.setattr(model.decoding, "decode", all_empty)
    with make_client() as c:
        assert same_error(c, 500, n=2, seed=1)["code"] == "no_reply"


def test_in_process_stream_matches_unstreamed(client):
    for extra in ({"n": 3, "seed": 4}, {"n": 1, "seed": 2, "max_tokens": 2}):
        whole = client.post("/v1/chat/completions", json=body(**extra)).json()
        r = client.post("/v1/chat/completions", json=body(stream=True, stream_options={"include_usage": True},
                                                          **extra))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        check_chunks([json.loads(d) for d in events(r.text)], whole, include_usage=True)
    for n, seed, usage in ((2, 9, True), (4, 3, False), (1, 5, True)):
        r = client.post("/v1/chat/completions", json=body(n=n, seed=seed, stream=True, rerank=False,
                                                          **({"stream_options": {"include_usage": True}} if usage
                                                             else {})))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        check_token_chunks([json.loads(d) for d in events(r.text)], respond_unranked(client, n, seed)["replies"],
                           include_usage=usage)


def test_tokens_stream_before_the_replies_are_complete(make_server, monkeypatch):
    """With reranking off a choice's words arrive while its request is still decoding: the engine's finishing of
    the request waits here until the client has read content, which it could not without token streaming."""
    from app.engine import Engine

    from model.bundle import DEFAULT_BUNDLE

    read_content, finished_first = threading.Event(), []
    finish = Engine._finish

    def held(self, job):
        if job.req.on_text is not None:  # the streamed request (not the warm-up)
            finished_first.append(not read_content.wait(10))
        return finish(self, job)

    monkeypatch.setattr(Engine, "_finish", held)
    url = make_server(bundle=DEFAULT_BUNDLE)  # the shipped model: replies of several words (the tiny one's are one)
    name = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    contents = []
    with httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions",
                         json=body(model=name, n=2, seed=7, stream=True, rerank=False)) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        contents.append(delta["content"])
                        read_content.set()
    assert contents and finished_first == [False]  # content came first, then the request finished
    assert len(contents) > 2  # in pieces as the words settle, not one whole text per choice


def test_docs_describe_streaming(client):
    op = client.get("/openapi.json").json()["paths"]["/v1/chat/completions"]["post"]
    ok = op["responses"]["200"]
    assert set(ok["content"]) == {"application/json", "text/event-stream"}
    chunk = ok["content"]["text/event-stream"]["schema"]
    assert chunk["properties"]["object"]["const"] == "chat.completion.chunk"
    assert "$defs" not in json.dumps(chunk)  # written in place: a #/$defs reference would not resolve
    assert "once the replies are chosen" in op["description"] and "tokens stream as they are decoded" in op["description"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ChatCompletionRequest"]
    assert "the tokens stream as they are decoded" in schema["properties"]["stream"]["description"]


def test_without_the_openai_client_only_the_client_tests_skip(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # what `import openai` meets when it is not installed
    tests = runpy.run_path(__file__)
    for name in ("test_openai_client_streams_n_choices", "test_openai_client_streaming_errors_are_the_unstreamed_ones"):
        with pytest.raises(pytest.skip.Exception, match="openai client"):
            tests[name](make_server=None)
