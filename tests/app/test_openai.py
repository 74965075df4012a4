"""The OpenAI-compatible routes: the official openai client against a live server (n choices, seed replay,
errors, /v1/models), and the mapping to the engine's decoding through the app (TestClient), each row against
the same request on /respond. Streaming: test_openai_stream.py."""
from __future__ import annotations

import runpy
import sys
import threading
import time

import pytest

import model.decoding
from app.routes.openai_api import decoding_of
from model.inputs import serving_context
from model.text import normalize

USER = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you"}]
CTX = ["hi there", "hello", "how are you"]
KEY = "sk-test-openai-3c9e1f"


def chat(client, **body):
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER, **body})
    assert r.status_code == 200, r.text
    return r.json()


def respond(client, **body):
    r = client.post("/respond", json={"context": CTX, **body})
    assert r.status_code == 200, r.text
    return r.json()


def openai_client():
    """The official client, for the live-server tests only: without it the in-process tests still run."""
    return pytest.importorskip("openai", reason="the dev extra installs the openai client")


def error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# ----- the live server, through the official client ------------------------------------------------------

def test_openai_client_gets_n_different_choices_that_replay_by_seed(make_server):
    openai = openai_client()
    url = make_server(max_batch_rows=1, max_wait_ms=0)  # batching off: replay is bit-exact (README)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    for extra in ({}, {"temperature": 0.9, "top_p": 0.95}):  # greedy tokens; token sampling
        out = client.chat.completions.create(model="tiny", messages=USER, n=4, seed=11, **extra)
        assert out.object == "chat.completion" and out.model == "tiny" and out.id.startswith("chatcmpl-")
        assert [c.index for c in out.choices] == [0, 1, 2, 3]
        texts = [c.message.content for c in out.choices]
        assert len(set(texts)) == 4 and all(t.strip() for t in texts)
        assert all(c.message.role == "assistant" and c.finish_reason in ("stop", "length") for c in out.choices)
        assert out.usage.completion_tokens > 0 and out.usage.prompt_tokens > 0
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
        assert out.system_fingerprint.startswith("fp_") and out.seed == 11  # extension field
        again = client.chat.completions.create(model="tiny", messages=USER, n=4, seed=11, **extra)
        assert [c.message.content for c in again.choices] == texts
        for c in out.choices:  # each choice alone: its seed, n=1, reranking off
            alone = client.chat.completions.create(model="tiny", messages=USER, n=1, seed=c.seed,
                                                   extra_body={"rerank": False}, **extra)
            assert (alone.choices[0].message.content, alone.choices[0].score) == (c.message.content, c.score)
            assert alone.choices[0].seed == c.seed


def test_openai_client_models_auth_and_errors(make_server):
    openai = openai_client()
    url = make_server(api_key=KEY)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "cvae-dialog"

    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
    for call in (lambda: wrong.models.list(), lambda: wrong.chat.completions.create(model="tiny", messages=USER)):
        with pytest.raises(openai.AuthenticationError) as e:
            call()
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key" and KEY not in str(e.value)

    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert (e.value.code, e.value.param) == ("model_not_found", "model") and "tiny" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")

    bad = [({"n": 17}, "n", "invalid_value"), ({"n": 0}, "n", "invalid_value"),
           ({"temperature": 2.5}, "temperature", "invalid_value"),
           ({"temperature": -1}, "temperature", "invalid_value"),
           ({"top_p": 1.5}, "top_p", "invalid_value"), ({"seed": -1}, "seed", "invalid_value"),
           ({"max_tokens": 13}, "max_tokens", "invalid_value"),  # over the tiny model's max_decode_len (12)
           ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),  # without stream
           ({"stop": ["\n"]}, "stop", "unsupported_value"),
           ({"extra_body": {"top_k": 5}}, "top_k", "unknown_parameter")]
    for kwargs, param, code in bad:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=USER, **kwargs)
        assert (e.value.status_code, e.value.param, e.value.code, e.value.type) == (
            400, param, code, "invalid_request_error"), kwargs
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[*USER, {"role": "assistant", "content": "fine"}])
    assert e.value.param == "messages.3.role" and "user" in e.value.message


# ----- the mapping, through the app ----------------------------------------------------------------------

@pytest.mark.parametrize("temperature, top_p, expected", [
    (None, None, ("greedy", None, None)),  # absent: the service's decoding, not OpenAI's temperature 1
    (None, 1.0, ("greedy", None, None)),
    (0, None, ("greedy", None, None)),
    (0, 0.5, ("greedy", None, None)),
    (None, 0, ("greedy", None, None)),
    (1, None, ("sample", 1.0, 1.0)),  # an explicit 1 samples, as on OpenAI
    (0.7, 0.9, ("sample", 0.7, 0.9)),
    (2, None, ("sample", 2.0, 1.0)),
    (None, 0.5, ("sample", 1.0, 0.5)),  # top_p alone: OpenAI's temperature 1
])
def test_decoding_of(temperature, top_p, expected):
    assert decoding_of(temperature, top_p) == expected


@pytest.mark.parametrize("openai_args, respond_args", [
    ({}, {"strategy": "greedy"}),
    ({"temperature": 0}, {"strategy": "greedy"}),
    ({"temperature": 0.8, "top_p": 0.9}, {"strategy": "sample", "temperature": 0.8, "top_p": 0.9}),
    ({"top_p": 0.5}, {"strategy": "sample", "temperature": 1.0, "top_p": 0.5}),
    ({"latent_temperature": 1.5, "rerank": False, "max_tokens": 3},
     {"latent_temperature": 1.5, "rerank": False, "max_tokens": 3}),
    ({"max_completion_tokens": 2}, {"max_tokens": 2}),
])
def test_same_choices_as_respond_with_the_mapped_decoding(client, openai_args, respond_args):
    out = chat(client, n=3, seed=21, **openai_args)
    ref = respond(client, n=3, seed=21, **respond_args)
    assert [(c["message"]["content"], c["seed"], c["score"], c["ranking"]) for c in out["choices"]] == [
        (r["text"], r["seed"], r["score"], r["ranking"]) for r in ref["replies"]]
    assert [c["finish_reason"] for c in out["choices"]] == [
        {"eos": "stop", "length": "length"}[r["finish_reason"]] for r in ref["replies"]]
    assert out["usage"]["completion_tokens"] == sum(r["tokens"] for r in ref["replies"])
    assert (out["seed"], out["candidates"]) == (21, ref["candidates"])
    d = out["decoding"]
    assert d["strategy"] == respond_args.get("strategy", "greedy") and d["rerank"] == ref["reranked"]
    assert d["latent_temperature"] == openai_args.get("latent_temperature", 0.7)
    if d["strategy"] == "sample":
        assert (d["temperature"], d["top_p"]) == (respond_args["temperature"], respond_args["top_p"])
    else:
        assert d["temperature"] is None and d["top_p"] is None


def test_response_shape_and_usage(client):
    out = chat(client, n=2, seed=3)
    assert set(out) == {"id", "object", "created", "model", "choices", "usage", "system_fingerprint", "seed",
                        "candidates", "decoding", "ignored_messages"}
    engine = client.app.state.runtime.engine
    assert out["system_fingerprint"] == f"fp_{engine.bundle.sha256[:12]}"
    assert abs(out["created"] - time.time()) < 60
    for c in out["choices"]:
        assert set(c) == {"index", "message", "finish_reason", "logprobs", "seed", "score", "ranking"}
        assert c["message"]["role"] == "assistant" and c["logprobs"] is None
    ids = engine.tokenizer.encode_batch([normalize(t, "plain") for t in CTX])
    turns, _ = serving_context(ids, engine.tokenizer.dialog_start_id, engine.config.max_context_turns,
                               engine.config.max_utt_len)
    assert out["usage"]["prompt_tokens"] == sum(len(t) for t in turns) > sum(len(t) for t in ids)
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]


def test_system_messages_are_not_given_to_the_model(client):
    plain = chat(client, n=2, seed=5)
    with_system = chat(client, n=2, seed=5, messages=[{"role": "system", "content": "You are a pirate."}, *USER])
    assert with_system["ignored_messages"] == [0] and plain["ignored_messages"] == []
    assert [c["message"] for c in with_system["choices"]] == [c["message"] for c in plain["choices"]]
    assert with_system["usage"] == plain["usage"]
    last_developer = chat(client, n=1, seed=5, messages=[*USER[:2], {"role": "developer", "content": "x"}, USER[2]])
    assert last_developer["ignored_messages"] == [2]


def test_consecutive_messages_of_one_role_are_one_turn(client):
    messages = [{"role": "user", "content": "hi"}, {"role": "user", "content": [{"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how are you"}]
    out = chat(client, n=2, seed=8, messages=messages)
    ref = respond(client, n=2, seed=8, context=["hi there", "hello", "how are you"])
    assert [c["message"]["content"] for c in out["choices"]] == [r["text"] for r in ref["replies"]]


def test_latent_temperature_zero_without_reranking_gives_one_choice(client):
    out = chat(client, n=3, seed=1, latent_temperature=0, rerank=False)
    assert len(out["choices"]) == 1  # one latent code, greedy: one distinct reply (documented: fewer than n)


@pytest.mark.parametrize("change, param, code", [
    ({"messages": []}, "messages", "invalid_value"),
    ({"messages": USER * 7}, "messages", "invalid_value"),  # 21 messages: over max_turns (20)
    ({"messages": [{"role": "user", "content": "x" * 1001}]}, "messages.0.content", "invalid_value"),
    ({"messages": [{"role": "user", "content": "  "}]}, "messages.0.content", "invalid_value"),
    ({"messages": [{"role": "user", "content": "\u200b\u200b"}]}, "messages.0.content", "invalid_value"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, "messages.0.role", "invalid_value"),
    ({"messages": [{"role": "user"}]}, "messages.0.content", "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "invalid_type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content", "unsupported_value"),
    ({"messages": [{"role": "system", "content": "be nice"}]}, "messages", "invalid_value"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "messages.1.role",
     "invalid_value"),
    ({"model": None}, "model", "invalid_type"),
    ({"n": "2"}, "n", "invalid_type"),  # strict types, as on /respond
    ({"n": 17}, "n", "invalid_value"),
    ({"temperature": 2.01}, "temperature", "invalid_value"),
    ({"top_p": -0.1}, "top_p", "invalid_value"),
    ({"seed": 2**63 - 1}, "seed", "invalid_value"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"max_completion_tokens": 13}, "max_completion_tokens", "invalid_value"),
    ({"max_tokens": 3, "max_completion_tokens": 4}, "max_tokens", "invalid_value"),
    ({"latent_temperature": -1}, "latent_temperature", "invalid_value"),
    ({"user": "u" * 257}, "user", "invalid_value"),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),  # stream: true only
    ({"logprobs": True}, "logprobs", "unsupported_value"),
    ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_value"),
    ({"stop": "\n"}, "stop", "unsupported_value"),
    ({"tools": []}, "tools", "unknown_parameter"),
])
def test_invalid_input_400(client, change, param, code):
    body = {"model": "tiny", "messages": USER, **change}
    if change.get("model", "") is None:
        del body["model"]
        code = "missing_required_parameter"
    e = error(client.post("/v1/chat/completions", json=body), 400)
    assert (e["param"], e["code"], e["type"]) == (param, code, "invalid_request_error")
    assert e["message"] and len(e["message"]) < 400


def test_neutral_values_of_unsupported_parameters_are_accepted(client):
    out = chat(client, n=1, seed=2, stream=False, logprobs=False, stop=None, frequency_penalty=0,
               presence_penalty=0.0, user="someone", temperature=None, top_p=None)
    assert len(out["choices"]) == 1


def test_malformed_bodies(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert error(r, 400)["code"] == "invalid_json"
    r = client.post("/v1/chat/completions", content=b'{"model": "\xff"}', headers={"content-type": "application/json"})
    assert error(r, 400)["code"] == "invalid_json" and "UTF-8" in error(r, 400)["message"]
    r = client.post("/v1/chat/completions", content=b"[]", headers={"content-type": "application/json"})
    assert error(r, 400)["param"] is None
    r = client.post("/v1/chat/completions", content=b"{}", headers={"content-type": "text/plain"})
    assert error(r, 415)["code"] == "unsupported_media_type"


def test_without_the_openai_client_only_the_client_tests_skip(monkeypatch):
    """This module imports without the openai package (the in-process tests need none); the client tests skip."""
    monkeypatch.setitem(sys.modules, "openai", None)  # what `import openai` meets when it is not installed
    tests = runpy.run_path(__file__)
    for name in ("test_openai_client_gets_n_different_choices_that_replay_by_seed",
                 "test_openai_client_models_auth_and_errors"):
        with pytest.raises(pytest.skip.Exception, match="openai client"):
            tests[name](make_server=None)


SURROGATE = "\\ud800"  # JSON's escape of a lone surrogate, which UTF-8 cannot encode


@pytest.mark.parametrize("raw, param", [
    ('{"model": "tiny", "messages": [{"role": "user", "content": "%s hello"}]}' % SURROGATE, "messages.0.content"),
    ('{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}' % SURROGATE, "model"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "%s"}' % SURROGATE,
     "temperature"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "%s": 1}' % SURROGATE, None),
], ids=["content", "model", "wrong-type", "parameter-name"])
def test_lone_surrogate_400(client, raw, param):
    r = client.post("/v1/chat/completions", content=raw.encode(), headers={"content-type": "application/json"})
    e = error(r, 400)
    assert e["param"] == param and e["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw", ["[" * 100_000 + "]" * 100_000,
                                 '{"model": "tiny", "messages": %s}' % ("[" * 100_000 + "]" * 100_000)],
                         ids=["body", "field"])
def test_json_nested_too_deeply_400_says_so(client, raw):
    r = client.post("/v1/chat/completions", content=raw.encode(), headers={"content-type": "application/json"})
    e = error(r, 400)
    assert e["code"] == "invalid_json" and "nested too deeply" in e["message"] and "UTF-8" not in e["message"]


def test_body_limit_413(make_client):
    with make_client(max_body_bytes=1024) as c:
        big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 2000}]}
        r = c.post("/v1/chat/completions", json=big)
        assert error(r, 413)["code"] == "request_too_large"


def test_unknown_paths_and_methods_in_openai_shape_only_under_v1(client):
    assert error(client.post("/v1/completions", json={}), 404)["code"] == "not_found"
    assert error(client.get("/v1/chat/completions"), 405)["code"] == "method_not_allowed"
    assert error(client.get("/v1/models/gpt-4o"), 404)["code"] == "model_not_found"
    assert client.get("/nowhere").json() == {"detail": "Not Found"}  # the rest of the app keeps its shape
    r = client.post("/respond", json={"context": ["hi"], "n": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "n"]


def test_models(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["tiny"]
    card = body["data"][0]
    assert card["object"] == "model" and isinstance(card["created"], int) and card["owned_by"] == "cvae-dialog"
    assert client.get("/v1/models/tiny").json() == card


def test_api_key_on_both_routes(make_client):
    with make_client(api_key=KEY) as c:
        for auth in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
            for r in (c.get("/v1/models", headers=auth),
                      c.post("/v1/chat/completions", json={"model": "tiny", "messages": USER}, headers=auth),
                      c.post("/v1/chat/completions", json={"n": "bad"}, headers=auth)):  # 401 before 400
                e = error(r, 401)
                assert e["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        ok = {"Authorization": f"Bearer {KEY}"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": USER, "n": 1}, headers=ok)
        assert r.status_code == 200


def test_the_docs_list_the_statuses_v1_answers(client):
    """/v1 answers invalid input with a 400, never FastAPI's 422, and an all-empty result with a 500 no_reply:
    its documented responses say so, and its ranking extension is /respond's."""
    spec = client.get("/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    card = spec["paths"]["/v1/models/{model_id}"]["get"]["responses"]
    assert "422" not in chat and "422" not in card
    assert "400" in chat and "404" in card and "no_reply" in chat["500"]["description"]
    assert client.post("/v1/chat/completions", json={"model": "tiny", "messages": []}).status_code == 400
    assert client.get("/v1/models/tiny", params={"junk": "x"}).status_code == 200
    assert "422" in spec["paths"]["/respond"]["post"]["responses"]  # /respond does answer 422
    schemas = spec["components"]["schemas"]
    choice = schemas["Choice"]["properties"]["ranking"]["description"]
    reply = schemas["ReplyOut"]["properties"]["ranking"]["description"]
    assert choice == "extension, " + reply
    assert "mmr" in choice and "four probe contexts" in choice and "no context" not in choice


def test_queue_full_429_and_draining_503(make_client):
    with make_client(warmup=False) as c:
        c.app.state.runtime.engine.batcher.queue_size = 0  # admits nothing (the setting is at least 1)
        r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": USER})
        e = error(r, 429)
        assert (e["type"], e["code"]) == ("rate_limit_error", "rate_limit_exceeded") and "retry-after" in r.headers
    with make_client() as c:
        c.app.state.runtime.start_draining()
        r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": USER})
        assert error(r, 503)["type"] == "server_error" and "retry-after" in r.headers


def test_timeout_504(make_client, monkeypatch):
    release = threading.Event()
    decode = model.decoding.decode

    def slow(*args, **kwargs):
        release.wait(5)
        return decode(*args, **kwargs)

    with make_client(request_timeout_s=0.2) as c:
        monkeypatch.setattr(model.decoding, "decode", slow)
        r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": USER})
        release.set()
        assert error(r, 504)["code"] == "timeout"


def test_metrics_count_the_routes_and_replies(client):
    chat(client, n=2, seed=4)
    client.get("/v1/models")
    lines = client.get("/metrics").text.splitlines()

    def value(name: str, *labels: str) -> float:
        return sum(float(x.split()[-1]) for x in lines if x.startswith(name) and all(lb in x for lb in labels))

    assert value("dialog_http_requests_total", 'route="/v1/chat/completions"', 'method="POST"', 'status="200"') == 1
    assert value("dialog_http_requests_total", 'route="/v1/models"', 'method="GET"', 'status="200"') == 1
    assert value("dialog_replies_total") >= 2


def test_no_reply_is_an_error_not_empty_choices(client, empty_rows):
    """When every candidate comes out empty there is no choice to give: a clear error, never "choices": []
    (clients read choices[0])."""
    empty_rows(1)
    e = error(client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER, "n": 2, "seed": 1}), 500)
    assert e["code"] == "no_reply" and e["type"] == "server_error" and "empty" in e["message"]
    r = client.post("/respond", json={"context": CTX, "n": 2, "seed": 1})  # /respond says so in its counts
    assert r.status_code == 200 and r.json()["replies"] == [] and r.json()["empty_dropped"] > 0
