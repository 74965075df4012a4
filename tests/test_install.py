"""Installed, not checked out: the wheel built from this tree, installed into a fresh virtual environment, runs
its console scripts from a directory outside the checkout, and serves the shipped model it carries.

Nothing is downloaded. The wheel is built without build isolation (setuptools is in the locked set) and
installed alone (--no-deps --no-index); the fresh environment then reaches its dependencies (torch and the
rest, at the lock's versions) in this test's own environment through a .pth file, added after the install, so
pip saw an empty environment. A .pth path line adds that folder to sys.path without running the .pth files in
it, so the checkout's editable install stays out: the test checks that app and model load from the wheel.
Installing the wheel's own dependencies from the lock (the README's command) would download, so it is not
done here.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from harness.server import Server

pytestmark = pytest.mark.slow  # a wheel build and five processes that load torch: about 30 s on two cores

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("model.safetensors", "config.json", "tokenizer.model", "manifest.json", "lexicon.txt", "MODEL_CARD.md")
# What a build must not copy from the checkout: environments, caches and earlier build outputs (a stale build/lib
# would put files in the wheel that the tree no longer has).
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                                     ".hypothesis", ".schemathesis", "runs", ".whl", ".device")


def clean_env() -> dict[str, str]:
    """The environment without anything that would point Python at the checkout or change the settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("DIALOG_", "PYTHON", "VIRTUAL_ENV")) and k != "PIP_FIND_LINKS"}


def run(cmd: list[str | Path], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def replies(table: str) -> list[str]:
    """The reply texts of `respond`'s table (after the header lines: #, mmr, rank, score, seed, reply)."""
    return [line.split(None, 5)[5] for line in table.strip().splitlines()[2:]]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel of this tree installed; returns its bin folder."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools (in the locked set)")
    tmp = tmp_path_factory.mktemp("install")
    src, dist, env = tmp / "src", tmp / "dist", tmp / "venv"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", dist, src], cwd=tmp)
    (wheel,) = dist.glob("cvae_dialog-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {f"model/pretrained/chat-cyclical/{f}" for f in SHIPPED} <= names  # the shipped model is package data
    assert {"app/static/index.html", "training/configs/chat-cyclical.toml"} <= names
    assert not any(n.startswith(("tests/", "harness/", "benchmarks/", "reliability/", "docs/")) for n in names)
    assert "cvae-dialog = app.__main__:main" in entry_points
    assert "cvae-dialog-train = training.__main__:main" in entry_points

    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp)
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       cwd=tmp).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "_test_dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    return env / "bin"


def test_installed_commands_run_from_outside_the_checkout(installed, tmp_path):
    where = run([installed / "python", "-c", "import json, app, model.bundle, training; print(json.dumps("
                 "[app.__file__, training.__file__, str(model.bundle.DEFAULT_BUNDLE)]))"], cwd=tmp_path)
    for path in json.loads(where.stdout):
        assert Path(path).is_relative_to(installed.parent) and not Path(path).is_relative_to(ROOT), path

    usage = run([installed / "cvae-dialog", "--help"], cwd=tmp_path).stdout
    assert usage.startswith("usage: cvae-dialog ") and "cvae-dialog respond" in usage and "DIALOG_PORT" in usage
    assert "usage: cvae-dialog respond " in run([installed / "cvae-dialog", "respond", "--help"], cwd=tmp_path).stdout
    assert "train" in run([installed / "cvae-dialog-train", "--help"], cwd=tmp_path).stdout

    out = run([installed / "cvae-dialog", "respond", "hi there", "-n", "2", "--seed", "1"], cwd=tmp_path).stdout
    assert out.startswith("# seed 1; 2 of 2 replies") and len(replies(out)) == 2 and all(replies(out))
    checkout = run([sys.executable, "-m", "app", "respond", "hi there", "-n", "2", "--seed", "1"], cwd=ROOT).stdout
    assert out == checkout  # the installed model and code give the checkout's replies


def test_installed_server_serves_the_shipped_model(installed, tmp_path):
    srv = Server(["--torch-threads", "1"], command=[str(installed / "cvae-dialog")], cwd=tmp_path,
                 ready_timeout=120)
    srv.env = clean_env()
    with srv:
        info = httpx.get(f"{srv.url}/info", timeout=10).json()
        assert info["model"]["name"] == "chat-cyclical"
        r = httpx.post(f"{srv.url}/respond", json={"context": ["hi there"], "n": 2, "seed": 1}, timeout=60)
        assert r.status_code == 200, r.text
        served = [x["text"] for x in r.json()["replies"]]
    cli = run([installed / "cvae-dialog", "respond", "hi there", "-n", "2", "--seed", "1"], cwd=tmp_path).stdout
    assert served == replies(cli)  # one pipeline: the server and the command give the same replies
