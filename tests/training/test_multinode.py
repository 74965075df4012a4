"""Training on several nodes with torch's elastic launcher: two agents on loopback stand for two nodes, run
with the command line of the Kubernetes multi-node overlay (deploy/k8s/overlays/training-multinode). A
worker killed mid-run is restarted by the agents and the run resumes from its checkpoint to the same
weights as a run never interrupted."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from model.bundle import load_bundle
from tests.conftest import REPO
from tests.training.test_loop import final_weights, sets
from training.loop import RunError, check_elastic_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_argv(run: Path, corpus: Path, rdzv_id: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The overlay's torchrun flags (node count, rendezvous, restarts) with the endpoint on loopback, one
    process per node, and the tiny config on the synthetic corpus."""
    pytest.importorskip("kubernetes_validate", reason="the overlay is read by tests/deploy (make install-dev)")
    from tests.deploy.test_k8s import multinode_torchrun_argv

    argv, env = multinode_torchrun_argv()
    flags = []
    for a in argv[1:argv.index("-m")]:
        name = a.split("=", 1)[0]
        flags.append({"--nproc-per-node": "--nproc-per-node=1", "--rdzv-endpoint": f"--rdzv-endpoint=127.0.0.1:{port}",
                      "--rdzv-id": f"--rdzv-id={rdzv_id}"}.get(name, a))
    cmd = [sys.executable, "-m", "torch.distributed.run", *flags, "--monitor-interval=0.5", "-m", "training",
           "train", "--config", "training/configs/tiny.toml", "--out", str(run),
           *sets(corpus, "train.steps=160", "train.ckpt_every=20", "train.eval_every=80", "train.log_every=20")]
    keep = {k: env[k] for k in env if k.startswith("TORCH")}
    return cmd, {**os.environ, **keep, "OMP_NUM_THREADS": "1"}


def start_nodes(cmd: list[str], env: dict[str, str], logs: Path) -> list[subprocess.Popen]:
    logs.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=open(logs / f"node{n}.log", "w"), start_new_session=True) for n in range(2)]


def finish(nodes: list[subprocess.Popen], logs: Path, timeout: float = 240) -> str:
    try:
        for p in nodes:
            p.wait(timeout=timeout)
    finally:
        for p in nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    text = "\n".join((logs / f"node{n}.log").read_text() for n in range(2))
    assert [p.returncode for p in nodes] == [0, 0], text[-4000:]
    return text


def checkpoint_step(run: Path) -> int:
    try:
        with safe_open(str(run / "checkpoint.safetensors"), framework="pt") as f:
            return json.loads(f.metadata()["state"])["step"]
    except Exception:  # not written yet, or being replaced
        return 0


def worker_of_rank(nodes: list[subprocess.Popen], rank: int) -> int | None:
    """The pid of the training process that torchrun started as RANK=rank, under either agent."""
    for agent in nodes:
        for child in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(child)
    return None


@pytest.mark.slow
def test_two_nodes_survive_a_killed_worker_and_resume_exactly(synthetic_corpus, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    cmd, env = launcher_argv(straight, synthetic_corpus, "straight", free_port())
    finish(start_nodes(cmd, env, tmp_path / "logs-straight"), tmp_path / "logs-straight")

    cmd, env = launcher_argv(killed, synthetic_corpus, "killed", free_port())
    nodes = start_nodes(cmd, env, tmp_path / "logs-killed")
    deadline = time.time() + 180
    while time.time() < deadline and checkpoint_step(killed) < 20 and all(p.poll() is None for p in nodes):
        time.sleep(0.05)
    step = checkpoint_step(killed)
    assert 20 <= step < 160, f"no checkpoint mid-run to resume from (step {step})"
    pid = worker_of_rank(nodes, 1)
    assert pid is not None, "no worker with RANK=1"
    os.kill(pid, signal.SIGKILL)
    text = finish(nodes, tmp_path / "logs-killed")

    assert "resumed from" in text  # the restarted workers started from the checkpoint, not from step 0
    with safe_open(str(killed / "checkpoint.safetensors"), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
    assert state["step"] == 160 and state["world"] == 2
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    load_bundle(killed / "bundle")


def test_the_shared_store_with_restarts_on_several_nodes_is_refused():
    several = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "TORCHELASTIC_MAX_RESTARTS": "3",
               "TORCHELASTIC_USE_AGENT_STORE": "True"}
    with pytest.raises(RunError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        check_elastic_env(several)
    # Each of these can work: its own store per round, no restarts, or one node (one agent counts alone).
    check_elastic_env({**several, "TORCHELASTIC_USE_AGENT_STORE": "False"})
    check_elastic_env({**several, "TORCHELASTIC_MAX_RESTARTS": "0"})
    check_elastic_env({**several, "LOCAL_WORLD_SIZE": "2"})
    check_elastic_env({})
