"""Hostile input as a class (issue 23, item 6): every string field of both APIs (/respond and
/v1/chat/completions), found by walking the served OpenAPI schema, and every field name, gets invalid Unicode
(lone surrogates, noncharacters, invalid and overlong escapes and byte sequences); every number field gets huge,
tiny and non-finite numbers; every field gets deep nesting. Against a live server: the status is an intended
one (never a 5xx), the body is UTF-8 JSON in the API's error shape and small whatever was sent, and nothing is
logged at ERROR or with a traceback."""
from __future__ import annotations

import copy
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

RESPOND, CHAT = "/respond", "/v1/chat/completions"
MARK = "@@hostile@@"
MAX_ERROR_BYTES = 8192

# JSON text of one string: escapes as sent, raw bytes where the point is bytes that are not UTF-8
UNICODE: dict[str, bytes] = {
    "lone high surrogate": rb'"\ud800"',
    "lone low surrogate": rb'"\udfff"',
    "pair reversed": rb'"\udc00\ud800"',
    "high surrogate at the end": rb'"hi \ud83d"',
    "high surrogate then a letter": rb'"\ud83dx"',
    "two high surrogates": rb'"\ud83d\ud83d"',
    "noncharacter U+FFFE": rb'"\ufffe"',
    "noncharacter U+FFFF, raw": '"\uffff"'.encode(),
    "noncharacter U+FDD0": rb'"\ufdd0"',
    "noncharacter U+10FFFF (a pair)": rb'"\udbff\udfff"',
    "noncharacter U+1FFFE, raw": '"\U0001fffe"'.encode(),
    "NUL": rb'"a\u0000b"',
    "only format characters": rb'"\u200b\u202e\ufeff"',
    "escape \\x": rb'"\x41"',
    "escape \\U": rb'"\U0001F600"',
    "short \\u escape": rb'"\u00"',
    "\\u escape not hex": rb'"\uZZZZ"',
    "overlong /": b'"\xc0\xaf"',
    "overlong NUL": b'"\xc0\x80"',
    "overlong 3-byte": b'"\xe0\x80\xaf"',
    "overlong 4-byte": b'"\xf0\x80\x80\xaf"',
    "UTF-8 of a surrogate (CESU-8)": b'"\xed\xa0\x80"',
    "lone continuation byte": b'"\x80"',
    "byte 0xFF": b'"\xff"',
    "truncated sequence": b'"\xe2\x82"',
    "5-byte sequence": b'"\xf8\x88\x80\x80\x80"',
    "above U+10FFFF": b'"\xf4\x90\x80\x80"',
}
LONE = {k for k in UNICODE if "surrogate" in k and "CESU" not in k}
DIGIT_LIMIT = sys.get_int_max_str_digits()
NUMBERS: dict[str, bytes] = {
    f"{DIGIT_LIMIT + 1} digits": b"9" * (DIGIT_LIMIT + 1),
    "4000 digits": b"9" * 4000,
    "-4000 digits": b"-" + b"9" * 4000,
    "1e400": b"1e400", "-1e400": b"-1e400", "1e-400": b"1e-400", "1e999999999": b"1e999999999",
    "NaN": b"NaN", "Infinity": b"Infinity", "-Infinity": b"-Infinity", "-0": b"-0",
    "5000 decimals": b"0." + b"1" * 5000,
    "2^63": str(2**63).encode(), "2^64": str(2**64).encode(), "-(2^63 + 1)": str(-(2**63) - 1).encode(),
}
NESTING: dict[str, bytes] = {
    "lists 100000 deep": b"[" * 100_000 + b"]" * 100_000,
    "lists 1000 deep": b"[" * 1000 + b"]" * 1000,
    "objects 1000 deep": b'{"a":' * 1000 + b"1" + b"}" * 1000,
    "lists and objects 900 deep": b'[{"a":' * 450 + b"1" + b"}]" * 450,
}
NAMES: dict[str, bytes] = {**{k: UNICODE[k] for k in sorted(LONE)}, "100000 characters": b'"' + b"k" * 100_000 + b'"',
                           "noncharacter U+FFFE": UNICODE["noncharacter U+FFFE"]}
BASE: dict[str, dict[str, Any]] = {
    RESPOND: {"context": ["Hi there.", "How are you?"], "n": 2, "seed": 1},
    CHAT: {"model": "tiny", "messages": [{"role": "user", "content": "Hi there."}], "n": 2, "seed": 1},
}
STATUSES = {RESPOND: {200, 413, 422}, CHAT: {200, 400, 404, 413}}  # 404: a model name that is not the served one


# ----- the fields, from the served schema ----------------------------------------------------------------------

def fields(spec: dict[str, Any], path: str) -> dict[tuple[Any, ...], str]:
    """Every leaf of a route's request body: its path (field names, 0 for a list item) -> "string" or "number"."""
    schemas = spec["components"]["schemas"]
    out: dict[tuple[Any, ...], str] = {}

    def walk(node: dict[str, Any], at: tuple[Any, ...], seen: frozenset[str]) -> None:
        ref = node.get("$ref", "")
        if ref:
            name = ref.rsplit("/", 1)[1]
            if name not in seen:
                walk(schemas[name], at, seen | {name})
            return
        for variant in node.get("anyOf", []) + node.get("allOf", []):
            walk(variant, at, seen)
        kind = node.get("type")
        if kind == "string":
            out[at] = "string"
        elif kind in ("integer", "number"):
            out[at] = "number"
        elif kind == "array":
            walk(node.get("items", {}), (*at, 0), seen)
        for name, sub in node.get("properties", {}).items():
            walk(sub, (*at, name), seen)

    walk(spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"], (), frozenset())
    return out


def body_with(api: str, at: tuple[Any, ...], key: bool = False) -> bytes:
    """The route's base body with MARK at ``at`` (as a value, or with ``key`` as a field name in the object
    there), serialised; the caller puts the hostile JSON text in MARK's place."""
    body = copy.deepcopy(BASE[api])
    if at[:1] in (("temperature",), ("top_k",), ("top_p",)) and api == RESPOND:
        body["strategy"] = "sample"  # else refused before the value matters
    if at[:1] == ("latents",):
        body.pop("n")
    if at[:1] == ("stream_options",):
        body["stream"] = True
    node: Any = body
    for i, step in enumerate(at[:-1] if not key else at):
        nxt = at[i + 1] if i + 1 < len(at) else None
        empty: Any = [] if isinstance(nxt, int) else {}
        if isinstance(node, list):
            while len(node) <= step:
                node.append(copy.deepcopy(empty))
            if not isinstance(node[step], type(empty)):
                node[step] = empty
        elif not isinstance(node.get(step), (list, dict)) or isinstance(node[step], list) != isinstance(empty, list):
            node[step] = empty
        node = node[step]
    if key:
        node[MARK] = 1
    elif isinstance(node, list):
        while len(node) <= at[-1]:
            node.append(None)
        node[at[-1]] = MARK
    else:
        node[at[-1]] = MARK
    if at[-3:-1] == ("content", 0):  # a text part of a message's content: {"type": "text", "text": ...}
        node.setdefault("type", "text")
        node.setdefault("text", "Hi there.")
    return json.dumps(body).encode()


def inject(template: bytes, value: bytes) -> bytes:
    return template.replace(json.dumps(MARK).encode(), value)


# ----- the server and its log -----------------------------------------------------------------------------------

class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info or "Traceback" in record.getMessage():
            self.bad.append(f"{record.name} {record.levelname}: {record.getMessage()[:300]}")


@pytest.fixture(scope="module")
def server(rel_bundle) -> Iterator[tuple[httpx.Client, Records, dict[str, Any]]]:
    from app.main import create_app
    from app.settings import Settings
    from harness.server import serve_in_thread

    records = Records()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn"), logging.getLogger("uvicorn.error")]
    for lg in loggers:
        lg.addHandler(records)
    app = create_app(Settings(bundle=rel_bundle, device="cpu", torch_threads=1, max_wait_ms=1.0, warmup=False))
    try:
        with serve_in_thread(app, 60) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield client, records, client.get("/openapi.json").json()
    finally:
        for lg in loggers:
            lg.removeHandler(records)


def post(server, api: str, raw: bytes) -> tuple[int, Any, list[str]]:
    """Send ``raw``; check what every answer must be; returns (status, the JSON body or None, problems)."""
    client, records, _ = server
    before = len(records.bad)
    r = client.post(api, content=raw, headers={"content-type": "application/json"})
    problems = []
    if r.status_code not in STATUSES[api]:
        problems.append(f"status {r.status_code}: {r.text[:200]}")
    doc = None
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        assert r.status_code == 200
    else:
        try:
            doc = json.loads(r.content.decode("utf-8"))  # strict UTF-8: no unpaired surrogate got through
        except ValueError as e:
            problems.append(f"body is not UTF-8 JSON: {e}: {r.content[:200]!r}")
    if r.status_code != 200 and doc is not None:
        if len(r.content) > MAX_ERROR_BYTES:
            problems.append(f"error body of {len(r.content)} bytes")
        if api == RESPOND and not isinstance(doc.get("detail"), (list, str)):
            problems.append(f"not /respond's error shape: {doc}")
        if api == CHAT and not (isinstance(doc.get("error"), dict)
                                and {"message", "type", "param", "code"} <= set(doc["error"])):
            problems.append(f"not OpenAI's error shape: {doc}")
    problems += records.bad[before:]
    return r.status_code, doc, problems


def messages(api: str, doc: Any) -> str:
    if api == CHAT:
        return str(doc["error"]["message"])
    return " | ".join(str(e.get("msg")) for e in doc["detail"])


# ----- the tests ------------------------------------------------------------------------------------------------

def test_the_schema_walk_finds_every_string_field(server):
    spec = server[2]
    assert {at for at, kind in fields(spec, RESPOND).items() if kind == "string"} == {("context", 0), ("strategy",)}
    assert {at for at, kind in fields(spec, CHAT).items() if kind == "string"} >= {
        ("model",), ("messages", 0, "role"), ("messages", 0, "content"), ("messages", 0, "name"), ("user",),
        ("stop",), ("stop", 0)}
    assert ("latents", 0, 0) in fields(spec, RESPOND) and ("temperature",) in fields(spec, CHAT)


# text parts of a message's content are strings the schema shows as the content string
EXTRA_STRINGS = {CHAT: [("messages", 0, "content", 0, "text"), ("messages", 0, "content", 0, "type")], RESPOND: []}


def test_invalid_unicode_in_every_string_field(server):
    failures, lone_unnamed, seen = [], [], 0
    for api in (RESPOND, CHAT):
        targets = [at for at, kind in fields(server[2], api).items() if kind == "string"] + EXTRA_STRINGS[api]
        for at in targets:
            template = body_with(api, at)
            for name, value in UNICODE.items():
                seen += 1
                status, doc, problems = post(server, api, inject(template, value))
                if problems:
                    failures.append((api, at, name, problems))
                elif name in LONE and (status == 200 or "lone surrogate" not in messages(api, doc)):
                    lone_unnamed.append((api, at, name, status, doc))
    assert seen > 250
    assert not failures, failures[:5]
    assert not lone_unnamed, lone_unnamed[:5]  # a lone surrogate is refused, and said to be one


def test_invalid_unicode_and_long_field_names(server):
    failures = []
    for api in (RESPOND, CHAT):
        for at in [(), *([("messages", 0)] if api == CHAT else [])]:
            template = body_with(api, at, key=True)
            for name, value in NAMES.items():
                status, doc, problems = post(server, api, inject(template, value))
                if status == 200:
                    problems.append("an unknown field name was accepted")
                if name in LONE and doc is not None and "lone surrogate" not in messages(api, doc):
                    problems.append(f"not named a lone surrogate: {doc}")
                if problems:
                    failures.append((api, at, name, problems))
    assert not failures, failures[:5]


def test_huge_tiny_and_non_finite_numbers_in_every_number_field(server):
    failures = []
    for api in (RESPOND, CHAT):
        for at in [at for at, kind in fields(server[2], api).items() if kind == "number"]:
            template = body_with(api, at)
            for name, value in NUMBERS.items():
                status, doc, problems = post(server, api, inject(template, value))
                if name.startswith(str(DIGIT_LIMIT + 1)) and doc is not None and \
                        f"more than {DIGIT_LIMIT} digits" not in messages(api, doc):
                    problems.append(f"the digit limit not named: {doc}")
                if problems:
                    failures.append((api, at, name, problems))
    assert not failures, failures[:5]


def test_deep_nesting_in_every_field(server):
    failures = []
    for api in (RESPOND, CHAT):
        for at in [(), *fields(server[2], api)]:
            template = body_with(api, at) if at else json.dumps(MARK).encode()
            for name, value in NESTING.items():
                status, _, problems = post(server, api, inject(template, value))
                if status == 200:
                    problems.append("accepted")
                if problems:
                    failures.append((api, at, name, problems))
    assert not failures, failures[:5]


FRAGMENTS = [v[1:-1] for k, v in UNICODE.items() if v.startswith(b'"') and not k.startswith(("escape", "short", "\\u"))]


@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hostile_pieces_mixed_into_text(server, data):
    """Hostile pieces among ordinary words, in any string field: the same rules hold."""
    api = data.draw(st.sampled_from([RESPOND, CHAT]))
    at = data.draw(st.sampled_from(sorted((at for at, k in fields(server[2], api).items() if k == "string"),
                                          key=repr)))
    pieces = data.draw(st.lists(st.one_of(st.sampled_from(FRAGMENTS),
                                          st.text("abcdefgh .,?!'", min_size=1, max_size=8).map(str.encode)),
                                min_size=1, max_size=12))
    _, _, problems = post(server, api, inject(body_with(api, at), b'"' + b"".join(pieces) + b'"'))
    assert not problems, (api, at, pieces, problems)
