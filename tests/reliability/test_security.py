"""Security: files a user hands us never run code (pickled weights, checkpoints and YAML configs are refused,
and a lint keeps unsafe loaders out of the source tree), the API key compared in constant time and never
logged or echoed, CORS off by default, the server running as the image's non-root user, and the dependency
audit script's verdicts."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from harness.server import Server

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


class _Payload:
    """Unpickling it creates the file ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled(marker: Path) -> bytes:
    return pickle.dumps({"decoder.out.weight": _Payload(marker)})


def _torch_saved(marker: Path, path: Path) -> bytes:
    import torch

    torch.save({"decoder.out.weight": _Payload(marker)}, path)  # a .pt file, as torch.save writes it
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickled_weights_in_a_bundle_are_refused_without_running(rel_bundle, tmp_path, kind):
    """A bundle whose weights are a pickle (its manifest updated to match, as an attacker would): the loader
    refuses it and the payload never runs."""
    from model.bundle import BundleError, load_bundle

    marker = tmp_path / "ran"
    bundle = tmp_path / "bundle"
    shutil.copytree(rel_bundle, bundle)
    weights = bundle / "model.safetensors"
    weights.write_bytes(_pickled(marker) if kind == "pickle" else _torch_saved(marker, tmp_path / "w.pt"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cannot read weights"):
        load_bundle(bundle)
    assert not marker.exists()
    pickle.loads(_pickled(marker))  # the payload is live: unpickling it does create the marker
    assert marker.exists()


def test_a_pickled_checkpoint_is_refused_without_running(tmp_path):
    from training.checkpoint import CheckpointError, load

    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(_pickled(marker))
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load(path)
    assert not marker.exists()


def test_a_yaml_config_cannot_run_code(tmp_path):
    from training.config import ConfigError, load_config

    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(path)
    assert not marker.exists()


def test_no_unsafe_deserialisation_in_the_source_tree():
    """A lint beside the tests above: no loader that can run code appears in the source."""
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


def test_api_key_is_compared_in_constant_time(make_app_client, monkeypatch):
    """Every key a request presents is checked by hmac.compare_digest (whose time does not depend on where the
    strings differ), whole, against the whole key, on each route that needs it; a wrong key of the right
    length is refused as a short one is."""
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a, b):
        calls.append((bytes(a), bytes(b)))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with make_app_client(api_key=KEY) as c:
        codes = [c.post(path, json=body, headers={"Authorization": f"Bearer {given}"}).status_code
                 for given in (KEY, WRONG[:len(KEY)], "x")
                 for path, body in (("/respond", {"context": ["hi"], "n": 1}),
                                    ("/v1/chat/completions", {"model": "tiny",
                                                              "messages": [{"role": "user", "content": "hi"}]}))]
    assert codes == [200, 200, 401, 401, 401, 401]
    assert [given for given, _ in calls] == [g.encode() for g in (KEY, KEY, WRONG[:len(KEY)], WRONG[:len(KEY)],
                                                                  "x", "x")]
    assert {key for _, key in calls} == {KEY.encode()}


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


def _image_user() -> tuple[str, int]:
    """The runtime image's USER and the uid the Dockerfile gives it (its APP_UID build argument)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    runtime = dockerfile.split("AS runtime", 1)[1]
    user = re.findall(r"^USER\s+(\S+)", runtime, re.M)[-1]
    uid = int(re.search(r"^ARG APP_UID=(\d+)", dockerfile, re.M).group(1))
    assert re.search(rf"useradd\b.*--uid \"\$\{{APP_UID\}}\".*\b{user}\b", dockerfile.replace("\\\n", " "))
    return user, uid


def _unreachable(path: Path) -> Path | None:
    """The first folder on the way to ``path`` (or the file) that users other than its owner cannot enter."""
    for p in [*reversed(path.parents), path]:
        if not p.stat().st_mode & (0o001 if p.is_dir() else 0o005):
            return p
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="starting the server as another user needs root")
def test_server_serves_as_the_images_non_root_user(rel_bundle, tmp_path_factory):
    """The server started as the runtime image's user (uid APP_UID, not root, as `USER app` runs it) loads the
    model and answers; the kernel reports that uid for the process. (docker/smoke.sh checks the built image
    itself: `id -u` in the running container.)"""
    user, uid = _image_user()
    assert user not in ("root", "0") and uid != 0
    blocked = _unreachable(Path(sys.executable).resolve())
    if blocked:
        pytest.skip(f"this interpreter is out of reach of uid {uid} here ({blocked} is not open to others)")
    shared = Path(tempfile.mkdtemp(prefix="cvae-nonroot-"))  # a folder the user can read: not pytest's 0700 tmp
    try:
        shared.chmod(0o755)
        bundle = shared / "bundle"
        shutil.copytree(rel_bundle, bundle)
        for p in [bundle, *bundle.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        with Server(["--bundle", str(bundle), "--torch-threads", "1", "--log-level", "warning"],
                    env={"HOME": str(shared)}, user=uid) as srv:
            status = Path(f"/proc/{srv.pid}/status").read_text()
            r = httpx.post(f"{srv.url}/respond", json={"context": ["hi"], "n": 1}, timeout=30)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(map(int, uids)) == {uid}  # real, effective, saved and filesystem uid
    assert r.status_code == 200 and r.json()["n_returned"] == 1


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
