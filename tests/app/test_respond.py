"""POST /respond through the real app on the tiny bundle: fields, determinism, replay, dedupe, latents."""
from __future__ import annotations

import pytest
CTX = ["hi there", "hello how are you"]


@pytest.fixture
def unbatched(make_client):
    """Batching off (one row per decode call): replay is bit-exact."""
    with make_client(max_batch_rows=1, max_wait_ms=0) as c:
        yield c


def post(client, **body):
    r = client.post("/respond", json={"context": CTX, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_response_shape(client):
    r = client.post("/respond", json={"context": CTX, "n": 3, "seed": 7})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"replies", "n_requested", "n_returned", "duplicates_dropped", "empty_dropped", "seed", "model",
                         "timing_ms", "request_id", "candidates", "reranked", "prior"}
    assert body["prior"] is None  # only with return_latents
    assert body["reranked"] is True and body["candidates"] >= 15  # 5 candidates per reply by default
    assert body["seed"] == 7 and body["n_requested"] == 3 and body["n_returned"] == len(body["replies"])
    assert body["model"]["name"] == "tiny" and len(body["model"]["sha256"]) == 64
    assert r.headers["x-request-id"] == body["request_id"]
    assert body["timing_ms"]["total"] >= 0
    for x in body["replies"]:
        assert set(x) == {"text", "score", "tokens", "finish_reason", "sample_index", "seed", "latent", "ranking"}
        assert set(x["ranking"]) == {"likelihood", "anti_lm", "rank", "mmr"}
        assert x["ranking"]["likelihood"] == pytest.approx(x["score"])
        assert x["text"].strip()  # an empty reply is never returned
        assert x["finish_reason"] in ("eos", "length") and x["latent"] is None
        assert x["seed"] == 7 + x["sample_index"]
        assert 0 <= x["tokens"] <= 12


def test_defaults_n5_random_seed(client):
    a, b = post(client), post(client)
    assert a["n_requested"] == 5 and 0 <= a["seed"] < 2**63 - 1
    assert a["seed"] != b["seed"]


def test_same_seed_same_replies(client):
    for strategy in ("greedy", "sample"):
        a = post(client, n=4, seed=123, strategy=strategy)
        b = post(client, n=4, seed=123, strategy=strategy)
        assert a["replies"] == b["replies"]


def test_without_reranking_replies_come_by_score(client):
    body = post(client, n=4, seed=7, rerank=False)
    assert body["reranked"] is False and body["candidates"] >= 4  # more when duplicates were redrawn
    scores = [x["score"] for x in body["replies"]]
    assert scores == sorted(scores, reverse=True) and all(x["ranking"] is None for x in body["replies"])


def test_reranked_reply_replays_with_its_seed_and_reranking_off(unbatched):
    for strategy in ("greedy", "sample"):
        full = post(unbatched, n=4, seed=11, strategy=strategy, return_latents=True)
        assert full["candidates"] >= 20
        for reply in full["replies"]:
            alone = post(unbatched, n=1, seed=reply["seed"], strategy=strategy, rerank=False, return_latents=True)
            got = alone["replies"][0]
            assert (got["text"], got["latent"], got["score"]) == (reply["text"], reply["latent"], reply["score"])


def test_candidates_bounds(client):
    assert post(client, n=2, seed=1, candidates=2)["candidates"] >= 2
    r = client.post("/respond", json={"context": CTX, "n": 3, "candidates": 2})
    assert r.status_code == 422 and "candidates" in r.text


def test_reply_seed_replays_that_reply(unbatched):
    for strategy in ("greedy", "sample"):
        full = post(unbatched, n=5, seed=2**63 - 3, strategy=strategy, dedupe=False, return_latents=True,
                    rerank=False)
        assert {r["seed"] for r in full["replies"]} == {(2**63 - 3 + i) % (2**63 - 1) for i in range(5)}
        for reply in full["replies"]:
            alone = post(unbatched, n=1, seed=reply["seed"], strategy=strategy, dedupe=False, return_latents=True,
                         rerank=False)
            assert alone["replies"][0] == {**reply, "sample_index": 0}


def test_latent_depends_only_on_seed_and_index(client):
    """Whatever else shares the batch, a reply's latent code is the same (it comes from its own seed)."""
    a = post(client, n=3, seed=50, return_latents=True, dedupe=False, rerank=False)
    b = post(client, n=1, seed=52, return_latents=True, dedupe=False, context=CTX, rerank=False)
    lat_a = {r["seed"]: r["latent"] for r in a["replies"]}
    assert lat_a[52] == b["replies"][0]["latent"]


def test_latents_round_trip(unbatched):
    first = post(unbatched, n=3, seed=9, return_latents=True, dedupe=False, rerank=False)
    codes = [r["latent"] for r in sorted(first["replies"], key=lambda r: r["sample_index"])]
    assert all(len(z) == 8 for z in codes)
    again = post(unbatched, latents=codes, dedupe=False)
    assert again["n_requested"] == 3
    by_index = {r["sample_index"]: r["text"] for r in again["replies"]}
    assert [by_index[i] for i in range(3)] == [r["text"] for r in sorted(first["replies"],
                                                                         key=lambda r: r["sample_index"])]


def test_latent_temperature_zero_gives_prior_mean(client):
    body = post(client, n=3, seed=1, latent_temperature=0, return_latents=True, dedupe=False)
    latents = [r["latent"] for r in body["replies"]]
    assert latents[0] == latents[1] == latents[2]
    texts = {r["text"] for r in body["replies"]}
    assert len(texts) == 1  # greedy from one code: one reply


def test_return_latents_gives_the_prior_the_codes_came_from(client):
    """Each returned code is mean + latent_temperature * std * eps(seed): the prior is the one sampled."""
    import torch

    from model.decoding import latent_noise

    body = post(client, n=3, seed=40, latent_temperature=0.5, return_latents=True, rerank=False, dedupe=False)
    prior = body["prior"]
    assert set(prior) == {"mean", "std", "latent_temperature"} and prior["latent_temperature"] == 0.5
    mean, std = torch.tensor(prior["mean"]), torch.tensor(prior["std"])
    assert mean.shape == std.shape == (8,) and bool((std > 0).all())
    for r in body["replies"]:
        eps = latent_noise([r["seed"]], 8)[0]
        assert torch.allclose(torch.tensor(r["latent"]), mean + 0.5 * std * eps, atol=1e-5)
    # the server's default temperature when the request leaves it out; no temperature for given codes
    assert post(client, n=1, seed=1, return_latents=True)["prior"]["latent_temperature"] == 0.7
    given = post(client, latents=[prior["mean"]], return_latents=True)
    assert given["prior"]["latent_temperature"] is None and given["prior"]["mean"] == pytest.approx(prior["mean"])


def test_dedupe_drops_repeats_and_draws_more(client, make_settings):
    body = post(client, n=3, seed=1, latent_temperature=0, rerank=False)  # every draw is the same reply
    rounds = make_settings().dedupe_rounds
    assert body["n_returned"] == 1
    assert body["duplicates_dropped"] == 2 + 2 * rounds
    # reranking: 3 x candidates_per_reply candidates, all one reply, then a round per missing reply (2, or 3
    # when the one reply was cut by the length limit and so does not count as usable)
    first = 3 * make_settings().candidates_per_reply
    body = post(client, n=3, seed=1, latent_temperature=0)
    assert body["n_returned"] == 1 and body["candidates"] in (first + 2 * rounds, first + 3 * rounds)
    assert body["duplicates_dropped"] == body["candidates"] - 1


def test_dedupe_returns_distinct_texts(client):
    body = post(client, n=8, seed=3, strategy="sample", temperature=1.5)
    texts = [" ".join(r["text"].casefold().split()) for r in body["replies"]]
    assert len(texts) == len(set(texts)) == body["n_returned"]
    assert body["n_returned"] == 8


def test_dedupe_with_given_latents_does_not_resample(client):
    z = [0.1] * 8
    body = post(client, latents=[z, z, z])
    assert body["n_returned"] == 1 and body["duplicates_dropped"] == 2


def test_max_tokens_limits_length(client):
    body = post(client, n=3, seed=4, max_tokens=2, dedupe=False, rerank=False)
    assert all(r["tokens"] <= 2 for r in body["replies"])


def test_limits_accepted_at_the_boundary(client):
    turns = ["hello there"] * 20
    turns[-1] = "x" * 1000
    body = post(client, context=turns, n=16, max_tokens=12, strategy="sample", top_k=5, top_p=0.9,
                temperature=0.7, seed=2**63 - 2)
    assert body["n_requested"] == 16


def test_normalisation_applies(client):
    a = post(client, context=["hello   there\u200b"], seed=5, n=2)
    b = post(client, context=["hello there"], seed=5, n=2)
    assert a["replies"] == b["replies"]


def test_the_event_loop_stays_free_while_a_request_is_prepared(make_client, monkeypatch):
    """Normalising and tokenising a context is CPU work: it runs off the event loop, so the server answers
    other requests meanwhile, and a context that normalises to nothing still gets its 422."""
    import threading

    entered, gate = threading.Event(), threading.Event()
    waited = {}
    with make_client() as c:
        tokenizer = c.app.state.runtime.engine.tokenizer
        encode = tokenizer.encode_batch

        def slow_encode(texts):  # stands in for the work of a large context
            entered.set()
            waited["gate_opened"] = gate.wait(5)  # on the loop, /healthz could not answer until this times out
            return encode(texts)

        monkeypatch.setattr(tokenizer, "encode_batch", slow_encode)
        out = {}
        t = threading.Thread(target=lambda: out.update(r=c.post("/respond", json={"context": CTX, "n": 1})))
        t.start()
        assert entered.wait(10)
        health = c.get("/healthz")
        gate.set()
        t.join(30)
        monkeypatch.setattr(tokenizer, "encode_batch", encode)
        bad = c.post("/respond", json={"context": ["hi", "\u200b\u200b"]})
    assert health.status_code == 200 and waited == {"gate_opened": True}
    assert out["r"].status_code == 200 and out["r"].json()["n_returned"] == 1
    assert bad.status_code == 422
    assert [e["loc"] for e in bad.json()["detail"]] == [["body", "context", 1]]


@pytest.mark.parametrize("fields, loc", [
    ({"temperature": 0.5}, ["body", "temperature"]),  # greedy decoding would ignore it
    ({"top_p": 0.5}, ["body", "top_p"]),
    ({"rerank": False, "candidates": 8}, ["body", "candidates"]),  # candidates count only when reranking
    ({"latents": [[0.0] * 8], "latent_temperature": 0.3}, ["body", "latent_temperature"]),
    ({"latents": [[0.0] * 8], "rerank": True}, ["body", "rerank"]),
    ({"latents": [[0.0] * 8], "n": 2}, ["body", "n"]),
])
def test_fields_that_would_change_nothing_are_refused(client, fields, loc):
    r = client.post("/respond", json={"context": CTX, **fields})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc


def test_a_wrong_size_latent_code_is_echoed(client):
    r = client.post("/respond", json={"context": CTX, "latents": [[0.0] * 8, [1.0, 2.0]]})
    assert r.status_code == 422
    d = r.json()["detail"][0]
    assert d["loc"] == ["body", "latents", 1] and d["input"] == [1.0, 2.0]


def test_empty_replies_are_counted_apart_from_duplicates(client, empty_rows):
    empty_rows(2)  # every other row comes out empty
    body = post(client, n=4, seed=5, dedupe=False, rerank=False)
    assert body["duplicates_dropped"] == 0 and body["empty_dropped"] >= 2
    assert all(r["text"] for r in body["replies"])


def test_dropped_candidates_are_redrawn_only_below_n_usable_replies(client, monkeypatch):
    """With reranking, empty and repeated candidates are not replaced one for one: new samples are drawn only
    when fewer than n usable (complete) replies remain (model.pipeline.ReplyJob.end_round), and the schema, the
    README, the settings and the flag's help say that, empty replies included."""
    from pathlib import Path

    import model.decoding
    from app.__main__ import SERVE_FLAGS
    from app.settings import Settings

    decode = model.decoding.decode

    def half_empty_rest_complete(*args, **kwargs):  # every other row empty, the others ended by the model
        out = decode(*args, **kwargs)
        out.tokens = [[] if i % 2 else t for i, t in enumerate(out.tokens)]
        out.finish_reason = ["eos"] * len(out.tokens)
        return out

    monkeypatch.setattr(model.decoding, "decode", half_empty_rest_complete)
    body = post(client, n=2, seed=3, candidates=10)
    assert body["empty_dropped"] == 5 and body["n_returned"] == 2
    assert body["candidates"] == 10  # 5 dropped, none replaced: at least n usable ones remained

    fields = client.get("/openapi.json").json()["components"]["schemas"]["RespondResponse"]["properties"]
    for name in ("duplicates_dropped", "empty_dropped"):
        assert "fewer than n usable replies" in fields[name]["description"], name
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    step = readme[readme.index("3. **Distinct replies**"):readme.index("4. **Rerank**")]
    assert "fewer than n usable replies" in step and "replace them" not in step
    quality = (Path(__file__).resolve().parents[2] / "docs" / "quality.md").read_text()
    rerank = quality[quality.index("5. **Over-generation and reranking**"):quality.index("## Choosing K")]
    assert "empty candidates last" not in rerank and "empty candidates are dropped" in rerank
    help_ = {name: text for name, _, text in SERVE_FLAGS}["dedupe_rounds"]
    for text in (help_, Settings.model_fields["dedupe_rounds"].description or ""):
        assert "empty" in text and "duplicate" in text and "fewer than n" in text, text


def test_reranked_replies_carry_the_value_they_were_picked_with(client):
    body = post(client, n=5, seed=12)
    mmr = [r["ranking"]["mmr"] for r in body["replies"] if r["finish_reason"] == "eos"]
    assert mmr == sorted(mmr, reverse=True)
    assert all(r["ranking"]["mmr"] <= r["ranking"]["rank"] + 1e-9 for r in body["replies"])


def test_the_schema_bounds_the_seed_with_an_integer(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    for name, field in (("RespondRequest", "seed"), ("ChatCompletionRequest", "seed")):
        seed = next(s for s in schema[name]["properties"][field]["anyOf"] if s.get("type") == "integer")
        assert seed["maximum"] == 2**63 - 2 and isinstance(seed["maximum"], int) and "exclusiveMaximum" not in seed


def test_a_client_past_its_cap_gets_429_counted_by_reason(make_client, monkeypatch):
    """max_per_client with client_header: the proxy's header names the client; the cap refuses that client
    only, and the metrics count the refusal by reason."""
    import threading

    import model.decoding

    release = threading.Event()
    decode = model.decoding.decode

    def held(*args, **kwargs):
        release.wait(5)
        return decode(*args, **kwargs)

    with make_client(max_per_client=1, client_header="X-Forwarded-For") as c:
        monkeypatch.setattr(model.decoding, "decode", held)
        try:
            results = {}
            first = threading.Thread(target=lambda: results.setdefault("a1", c.post(
                "/respond", json={"context": CTX, "n": 1, "seed": 1}, headers={"X-Forwarded-For": "10.0.0.1"})))
            first.start()
            for _ in range(100):  # until the first request is admitted
                if c.app.state.runtime.engine.batcher.admitted:
                    break
                threading.Event().wait(0.02)
            again = c.post("/respond", json={"context": CTX, "n": 1, "seed": 2},
                           headers={"X-Forwarded-For": "10.0.0.1, 192.168.0.9"})
            assert again.status_code == 429 and again.headers["retry-after"] == "1"
            assert "this client" in again.json()["detail"]
            release.set()
            other = c.post("/respond", json={"context": CTX, "n": 1, "seed": 3},
                           headers={"X-Forwarded-For": "10.0.0.2"})
            assert other.status_code == 200
            first.join(10)
            assert results["a1"].status_code == 200
        finally:
            release.set()
        metrics = c.get("/metrics").text
        assert 'dialog_rejected_total{reason="client_limit"} 1.0' in metrics
