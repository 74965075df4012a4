"""Hostile input: property tests (hypothesis) for the text pipeline, the corpus readers and the request
models, and a schema-driven fuzz run (schemathesis) whose every response must match the OpenAPI schema.

Inputs: arbitrary unicode (control characters, zero-width and bidi marks, NUL, lone combining marks),
empty and whitespace turns, very long turns and many turns. Whatever comes in, the outcome is one of the
intended ones: a value, or the module's own error (CorpusError, ValidationError, InputError, a 4xx)."""
from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import ValidationError

from model.text import STYLES, normalize
from training.data import CorpusError, read_corpus

FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

# Text that hits the hard cases often: control and format characters, odd whitespace, combining marks.
NASTY = st.sampled_from(["\x00", "\x07", "\x1b[31m", "\r\n", "\t", "\u200b", "\u200e", "\u202e", "\u2028",
                         "\ufeff", "\u0301", "\ufffd", "  ", "__eou__", "<d>", "'s", "n't", "\U0001f600",
                         "\u0000\u0000", "\\", '"', "{", "}"])
TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(NASTY, st.text(string.ascii_letters + " .,?!'", max_size=8)), max_size=30).map("".join),
    st.builds(lambda c, n: c * n, st.text(min_size=1, max_size=3), st.integers(1000, 20_000)),  # very long
)


# ----- text pipeline and tokenizer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(rel_bundle):
    from model.tokenizer import Tokenizer

    return Tokenizer.load(rel_bundle / "tokenizer.model")


@FAST
@given(text=TEXT, style=st.sampled_from(sorted(STYLES)))
def test_normalize_total_and_stable(text, style):
    out = normalize(text, style)
    assert isinstance(out, str)
    assert normalize(out, style) == out  # a second pass changes nothing: serving and training agree
    assert out == out.strip()


@FAST
@given(text=TEXT)
def test_tokenizer_round_trip_is_total(tokenizer, text):
    ids = tokenizer.encode(normalize(text, "plain"))
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert isinstance(tokenizer.decode(ids), str)
    batch = tokenizer.encode_batch([text, "", " "])
    assert len(batch) == 3 and batch[1] == []


@FAST
@given(ids=st.lists(st.integers(-5, 10_000), max_size=200))
def test_tokenizer_decodes_any_ids_or_refuses(tokenizer, ids):
    try:
        assert isinstance(tokenizer.decode(ids), str)
    except IndexError:  # ids outside the vocabulary: sentencepiece refuses them, no crash
        assert any(i >= tokenizer.vocab_size or i < 0 for i in ids)


# ----- corpus readers --------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                               max_size=5), max_leaves=20)
TURN = st.one_of(TEXT, st.fixed_dictionaries({"speaker": TEXT, "text": TEXT}), JSON)
LINE = st.one_of(
    st.builds(lambda t: json.dumps({"turns": t}), st.lists(TURN, max_size=40)),
    st.builds(json.dumps, JSON),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
    st.just("{not json"), st.just("[" * 5000),
)


def _check_dialogs(dialogs) -> None:
    for d in dialogs:
        assert d.turns and all(isinstance(t.text, str) and t.text.strip() for t in d.turns)


@FAST
@given(lines=st.lists(LINE, max_size=8))
def test_jsonl_reader_reads_or_names_the_line(tmp_path_factory, lines):
    f = tmp_path_factory.mktemp("jsonl") / "train.jsonl"
    f.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        _check_dialogs(read_corpus("jsonl", f, "train"))
    except CorpusError as e:
        assert str(f) in str(e)


@FAST
@given(raw=st.lists(st.binary(max_size=60), max_size=6))
def test_jsonl_reader_on_arbitrary_bytes(tmp_path_factory, raw):
    f = tmp_path_factory.mktemp("bytes") / "train.jsonl"
    f.write_bytes(b"\n".join(raw))
    try:
        _check_dialogs(read_corpus("jsonl", f, "train"))
    except CorpusError as e:
        assert str(f) in str(e)


SWDA_UTT = st.one_of(st.tuples(TEXT, TEXT, st.lists(TEXT, max_size=2)), JSON)


@FAST
@given(objs=st.lists(st.one_of(st.fixed_dictionaries({"utts": st.lists(SWDA_UTT, max_size=6)},
                                                     optional={"topic": JSON, "A": JSON}), JSON), max_size=5))
def test_swda_reader_reads_or_names_the_line(tmp_path_factory, objs):
    d = tmp_path_factory.mktemp("swda")
    (d / "train.jsonl").write_text("\n".join(json.dumps(o) for o in objs))
    try:
        dialogs = read_corpus("swda", d, "train")
    except CorpusError as e:
        assert str(d / "train.jsonl") in str(e)
    else:
        assert all(d.turns for d in dialogs)


# ----- request models and the engine's checks --------------------------------------------------------------


@pytest.fixture(scope="module")
def request_model():
    from app.schemas import request_model
    from app.settings import Settings

    return request_model(Settings(max_turns=20, max_turn_chars=1000, max_n=16, max_tokens=64))


@pytest.fixture(scope="module")
def engine(rel_bundle):
    from app.engine import Engine

    return Engine.from_bundle(rel_bundle, device="cpu", torch_threads=1)


CONTEXT = st.lists(TEXT, max_size=30)
BODY = st.one_of(
    st.fixed_dictionaries({"context": CONTEXT}, optional={
        "n": st.integers(-3, 20), "seed": st.integers(-1, 2**64), "max_tokens": st.integers(-1, 70) | st.none(),
        "strategy": st.sampled_from(["greedy", "sample", "beam", ""]), "temperature": st.floats(),
        "top_p": st.floats(), "top_k": st.integers(-1, 200_000), "latent_temperature": st.floats(),
        "latents": st.lists(st.lists(st.floats(), max_size=10), max_size=3) | st.none(),
        "dedupe": JSON}),
    st.dictionaries(st.text(max_size=10), JSON, max_size=6),
    JSON,
)


@FAST
@given(body=BODY)
def test_request_model_accepts_only_within_limits(request_model, engine, body):
    from app.engine import GenerationRequest, InputError

    try:
        req = request_model.model_validate(body)
    except ValidationError as e:
        assert len(str(e)) < 20_000  # the message does not grow with the input
        return
    assert 1 <= len(req.context) <= 20 and all(0 < len(t) <= 1000 and t.strip() for t in req.context)
    assert 1 <= req.n <= 16
    try:
        job = engine.prepare(GenerationRequest(**req.model_dump()))
    except InputError as e:
        assert e.loc and e.loc[0] in ("context", "latents", "max_tokens", "n")
        return
    assert job.n >= 1 and all(all(0 <= i < engine.tokenizer.vocab_size for i in t) for t in job.turn_ids)


# ----- through the HTTP app: error bodies stay small, the body limit holds ------------------------------


@pytest.fixture(scope="module")
def client(rel_bundle):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    settings = Settings(bundle=rel_bundle, device="cpu", torch_threads=1, max_wait_ms=1.0, warmup=False,
                        max_body_bytes=64 * 1024)
    with TestClient(create_app(settings)) as c:
        yield c


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(body=BODY)
def test_http_any_body_gets_an_intended_status_and_a_small_error(client, body):
    try:
        raw = json.dumps(body).encode()
    except (ValueError, UnicodeEncodeError):
        assume(False)
    r = client.post("/respond", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 413, 422), r.text[:300]
    if r.status_code != 200:
        assert len(r.content) <= 8192, (r.status_code, len(r.content))
        assert "detail" in r.json()
    if len(raw) > 64 * 1024:
        assert r.status_code == 413


@pytest.mark.parametrize("size", [64 * 1024 + 1, 1 << 20, 8 << 20])
def test_body_limit_413_small_body(client, size):
    r = client.post("/respond", content=b'{"context": ["' + b"a" * size + b'"]}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 200


def test_body_limit_without_content_length(client):
    def chunks():
        for _ in range(100):
            yield b"a" * 1024

    r = client.post("/respond", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


# ----- schemathesis: every operation, positive and negative examples, schema-conformant answers ------------


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_every_operation_conforms(client, mode):
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis import checks

    chosen = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
              checks.response_schema_conformance, checks.response_headers_conformance]
    # from the served document, not from_asgi: that runs the app's lifespan again, and its shutdown
    # would leave the shared app draining
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    failures, seen = [], 0
    for result in schema.get_all_operations():
        op = result.ok()

        @settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        def check(case):
            nonlocal seen
            seen += 1
            # the case serialised as schemathesis sends it (raw bytes, odd headers and all)
            kw = case.as_transport_kwargs(base_url=str(client.base_url))
            req = {k: v for k, v in kw.items() if k in ("method", "url", "headers", "params", "content", "json")}
            # requests' keywords in httpx's terms (httpx deprecates per-request cookies= and raw bytes as data=):
            # a raw body as content=, cookies as the Cookie header they become
            if isinstance(kw.get("data"), (bytes, str)):
                req["content"] = kw["data"]
            elif kw.get("data") is not None:
                req["data"] = kw["data"]
            if kw.get("cookies"):
                req["headers"] = {**(req.get("headers") or {}),
                                  "Cookie": "; ".join(f"{k}={v}" for k, v in kw["cookies"].items())}
            r = client.request(**req)
            try:
                case.validate_response(r, checks=chosen)
            except (Exception, BaseExceptionGroup) as e:  # a failed check: keep it for the message
                failures.append((case.method, case.formatted_path, r.status_code, r.text[:200], str(e)[:300]))

        try:
            check()
        except Unsatisfiable:  # negative mode: an operation without parameters has no invalid input
            assert mode == "negative"
    assert seen >= 50  # operations without parameters have a single example
    assert not failures, failures[:3]
    assert client.get("/readyz").status_code == 200
