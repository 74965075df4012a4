"""The container files without an engine: the train entrypoint's behaviour, the pinned base image, the build
arguments and the layers. docker/smoke.sh (CI) builds and runs the API image itself."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENTRYPOINT = ROOT / "docker" / "train-entrypoint.sh"


def entrypoint(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    """docker/train-entrypoint.sh as the train image runs it, with this interpreter as `python`."""
    bindir = data.parent / "bin"
    bindir.mkdir(exist_ok=True)
    python = bindir / "python"  # a wrapper, not a symlink: a venv's interpreter must be run by its own path
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "CORPORA_DIR": str(data),
           "PYTHONPATH": str(ROOT)}
    # cwd as in the image (/runs): the shipped configs' ../shared/data is then beside it, and missing
    runs = data.parent / "runs"
    runs.mkdir(exist_ok=True)
    return subprocess.run(["sh", str(ENTRYPOINT), *args], cwd=runs, env=env, capture_output=True, text=True,
                          timeout=120)


def test_train_without_corpora_says_what_to_mount(tmp_path):
    data = tmp_path / "data"
    data.mkdir()  # what compose mounts when DATA_DIR is not set: an empty volume
    r = entrypoint("train", "--config", "tiny", "--out", str(tmp_path / "run"), data=data)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"no corpora in {data}" in r.stderr and "DATA_DIR=/path/to/data docker compose run --rm train train" in r.stderr
    assert "corpus not found" in r.stderr  # then the CLI's own one-line error, no traceback
    assert "Traceback" not in r.stderr


def test_entrypoint_is_quiet_with_corpora_or_without_a_data_command(tmp_path):
    data = tmp_path / "data"
    (data / "swda").mkdir(parents=True)
    r = entrypoint("train", "--help", data=data)
    assert r.returncode == 0 and "usage:" in r.stdout and "no corpora" not in r.stderr, r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = entrypoint("--help", data=empty)  # the image's default command
    assert r.returncode == 0 and "usage:" in r.stdout and "no corpora" not in r.stderr, r.stderr


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _default(value: str) -> str:
    """The default of a compose "${NAME:-default}" value."""
    m = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    assert m, value
    return m.group(1)


def test_base_image_is_pinned_by_digest_and_compose_agrees():
    m = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, re.M)
    assert m and re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", m.group(1)), "BASE_IMAGE pinned by digest"
    assert _default(_compose()["x-build-args"]["BASE_IMAGE"]) == m.group(1)


def test_every_build_argument_has_a_default():
    """An ARG without a default makes podman/buildah warn 'missing "NAME" build argument' on every build that
    does not pass it (compose passes none of PIP_CERT)."""
    first_stage = DOCKERFILE.index("\nFROM ")
    for line in re.findall(r"^ARG\s+(\S+)$", DOCKERFILE[:first_stage], re.M):
        assert "=" in line, f"global ARG {line} has no default"


def test_train_service_creates_no_host_folder_for_missing_corpora():
    """A bind mount of a missing host path makes Docker create it, empty and owned by root: the corpora are
    bound only when DATA_DIR names them, else an (empty) named volume stands in."""
    compose = _compose()
    mounts = [v for v in compose["services"]["train"]["volumes"] if v.endswith(":/shared/data:ro")]
    assert len(mounts) == 1
    source = _default(mounts[0].split(":/shared/data")[0])
    assert "/" not in source and not source.startswith("."), "the default must be a named volume, not a path"
    assert source in compose["volumes"]


def _stage(name: str) -> str:
    m = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S)
    assert m, name
    return m.group(1)


@pytest.mark.parametrize("target, deps", [("runtime", "deps"), ("train", "train-deps")])
def test_dependencies_and_project_are_separate_layers(target, deps):
    """A code change rebuilds the project stage only: the final image copies the dependencies' venv (torch)
    and the project in separate layers, dependencies first, so the large layer is reused and not re-shipped."""
    copies = re.findall(r"^COPY --from=(\S+) (\S+) ", _stage(target), re.M)
    assert copies[:2] == [(deps, "/opt/venv"), ("project", "/opt/cvae-dialog")]
    for stage in ("deps", deps):
        assert "COPY . " not in _stage(stage), f"stage {stage} must not see the source tree"
    assert "requirements/runtime.txt" in _stage("deps"), "the runtime lock installs the dependencies"
    assert "--no-deps --target /opt/cvae-dialog" in _stage("project")
