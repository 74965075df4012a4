"""Security: no unsafe deserialisation in the source tree, the API key compared in constant time and never
logged or echoed, CORS off by default, a non-root container, and the dependency audit script's verdicts."""
from __future__ import annotations

import inspect
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from reliability.server import Server

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("app", "model", "training", "reliability", "docker", "scripts", "benchmarks")

# Each pattern is a way to run code hidden in a file: unpickling, or a YAML/torch/numpy loader allowed to.
UNSAFE = {
    "pickle": re.compile(r"\b(c?pickle|dill|joblib|shelve|marshal)\b"),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
    "np.load with allow_pickle": re.compile(r"\bnp\.load\([^)]*allow_pickle\s*=\s*True|allow_pickle\s*=\s*True"),
    "yaml.load (not safe_load)": re.compile(r"\byaml\.(load|load_all|unsafe_load|full_load)\("),
    "eval/exec": re.compile(r"(?<![\w.])(eval|exec)\("),
}


def _source_files() -> list[Path]:
    files = []
    for d in SOURCE_DIRS:
        root = ROOT / d
        if root.is_dir():
            files += [p for p in root.rglob("*") if p.suffix in (".py", ".sh") and ".venv" not in p.parts]
    return files + [p for p in (ROOT / "Dockerfile",) if p.exists()]


def test_no_unsafe_deserialisation_in_the_source_tree():
    files = _source_files()
    assert len(files) > 20
    hits = []
    for path in files:
        for no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            code = line.split("#", 1)[0] if path.suffix == ".py" else line
            for what, pattern in UNSAFE.items():
                if pattern.search(code):
                    hits.append(f"{path.relative_to(ROOT)}:{no}: {what}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_the_grep_catches_what_it_should():
    bad = ["import pickle", "x = torch.load(path)", "torch.load(p, map_location='cpu')",
           "np.load(f, allow_pickle=True)", "yaml.load(text)", "eval(s)"]
    good = ["torch.load(p, weights_only=True)", "yaml.safe_load(text)", "ast.literal_eval(s)", "np.load(f)",
            "model.eval()", "safetensors.torch.load_file(p)"]
    assert all(any(p.search(b) for p in UNSAFE.values()) for b in bad)
    assert not [g for g in good if any(p.search(g) for p in UNSAFE.values())]


# ----- the API key ----------------------------------------------------------------------------------------

KEY = "sk-test-7f3a9c1e5b2d4f6a8c0e"
WRONG = "sk-wrong-0d9e8f7a6b5c4d3e2f1a"


def test_api_key_is_compared_in_constant_time():
    from app.routes import respond

    src = inspect.getsource(respond.require_api_key)
    assert "hmac.compare_digest(" in src
    assert not re.search(r"(==|!=)\s*key|key\S*\s*(==|!=)", src)


def test_api_key_checked_and_never_logged_in_process(make_app_client, caplog):
    caplog.set_level(logging.DEBUG)
    with make_app_client(api_key=KEY) as c:
        good = c.post("/respond", json={"context": ["hi"], "n": 1}, headers={"Authorization": f"Bearer {KEY}"})
        assert good.status_code == 200
        for auth in (f"Bearer {WRONG}", f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", KEY, f"Basic {KEY}", ""):
            r = c.post("/respond", json={"context": ["hi"]}, headers={"Authorization": auth} if auth else {})
            assert r.status_code == 401, auth
            assert KEY not in r.text and WRONG not in r.text
        pages = [c.get(p).text for p in ("/info", "/openapi.json", "/metrics", "/readyz")]
    assert not [p for p in pages if KEY in p]
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert KEY not in logged and WRONG not in logged


def test_api_key_never_in_the_server_log(rel_bundle):
    """The real server (uvicorn, debug logging) with the key from the environment, as deployed."""
    with Server(["--bundle", str(rel_bundle), "--torch-threads", "1", "--log-level", "debug"],
                env={"DIALOG_API_KEY": KEY}) as srv:
        ok = httpx.post(f"{srv.url}/respond", json={"context": ["hi"], "n": 1},
                        headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        bad = httpx.post(f"{srv.url}/respond", json={"context": ["hi"]},
                         headers={"Authorization": f"Bearer {WRONG}"}, timeout=30)
        srv.terminate()
        log = srv.log()
    assert (ok.status_code, bad.status_code) == (200, 401)
    assert "POST /respond 401" in log and "POST /respond 200" in log  # the requests were logged ...
    assert KEY not in log and WRONG not in log  # ... but not the key


# ----- CORS ----------------------------------------------------------------------------------------------


def test_cors_off_by_default(make_app_client):
    with make_app_client() as c:
        pre = c.options("/respond", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        r = c.post("/respond", json={"context": ["hi"], "n": 1}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in pre.headers and pre.status_code in (405, 400)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(make_app_client):
    with make_app_client(cors_origins="https://app.example") as c:
        ok = c.options("/respond", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        evil = c.options("/respond", headers={"Origin": "https://evil.example",
                                              "Access-Control-Request-Method": "POST"})
    assert ok.headers.get("access-control-allow-origin") == "https://app.example"
    assert "access-control-allow-origin" not in evil.headers


# ----- the container -------------------------------------------------------------------------------------


def test_container_runs_as_non_root():
    """The image's last USER is not root, and the container smoke test checks it at run time."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0", "0:0")
    smoke = (ROOT / "docker" / "smoke.sh").read_text()
    assert "id -u" in smoke and "runs as root" in smoke


# ----- the dependency audit ------------------------------------------------------------------------------

FAKE = """#!{python}
import json, sys
out = sys.argv[sys.argv.index("-o") + 1]
mode = {mode!r}
if mode == "offline":
    sys.stderr.write("requests.exceptions.ConnectionError: HTTPSConnectionPool(host='pypi.org', port=443): "
                     "Max retries exceeded (Failed to resolve 'pypi.org')\\n")
    sys.exit(1)
if mode == "broken":
    sys.stderr.write("pip_audit: error: something else\\n")
    sys.exit(2)
deps = [{{"name": "fastapi", "version": "0.1", "vulns": []}}, {{"name": "torch", "version": "2.0", "vulns": []}}]
if mode == "vulnerable":
    deps[1]["vulns"] = [{{"id": "PYSEC-0000-1", "fix_versions": ["2.6"], "description": "x"}}]
if mode == "unanswered":
    deps = [{{"name": d["name"], "version": d["version"], "skip_reason": "Dependency not found on PyPI"}} for d in deps]
open(out, "w").write(json.dumps({{"dependencies": deps, "fixes": []}}))
sys.exit(1 if mode == "vulnerable" else 0)
"""


@pytest.mark.parametrize("mode, rc, verdict", [
    ("clean", 0, "OK: 2 packages audited"),
    ("vulnerable", 1, "FAIL: 1 known vulnerabilities"),
    ("offline", 0, "SKIPPED: pip-audit could not reach"),
    ("unanswered", 0, "SKIPPED: the vulnerability service answered for none"),
    ("broken", 2, "FAIL: pip-audit failed"),
])
def test_audit_script_verdicts(tmp_path, mode, rc, verdict):
    fake = tmp_path / "pip-audit"
    fake.write_text(FAKE.format(python=sys.executable, mode=mode))
    fake.chmod(0o755)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "audit.sh")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PIP_AUDIT": str(fake), "AUDIT_PYTHON": sys.executable})
    assert r.returncode == rc, r.stdout + r.stderr
    assert r.stdout.startswith(verdict), r.stdout
    if mode == "vulnerable":
        assert "torch 2.0: PYSEC-0000-1 (fixed in: 2.6)" in r.stdout


# ----- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture
def make_app_client(rel_bundle):
    import contextlib

    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    @contextlib.contextmanager
    def make(**overrides):
        s = Settings.model_validate({"bundle": rel_bundle, "device": "cpu", "torch_threads": 1, "warmup": False,
                                     **overrides})
        with TestClient(create_app(s)) as c:
            yield c

    return make
