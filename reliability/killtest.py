"""Kill a training run with SIGKILL at random points, resume it each time, and compare the result with an
uninterrupted run of the same config: the weights must be identical, every resume must start from the last
checkpoint written before the kill (so at most the work since that checkpoint is lost), and the latest
checkpoint must always load (never torn, even when the kill lands during its write).

    python -m reliability.killtest --kills 10 --out /tmp/killtest

Runs `python -m training train` on a synthetic JSONL corpus with a tiny model (CPU, one thread). Some
kills are at random times; others wait for a checkpoint's temporary file to appear and kill at once, to
land inside a checkpoint write. Prints and writes (--json) a summary; exit 0 when every check passed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from harness.words import sentence

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("reliability.killtest")

CONFIG = """\
name = "killtest"
[data]
corpus = "jsonl"
dir = "{corpus}"
max_context_turns = 4
max_utt_len = 12
[tokenizer]
vocab_size = 64
[model]
preset = "tiny"
[schedule]
kind = "cyclical"
cycles = 2
[train]
steps = {steps}
batch_size = 8
log_every = 1
eval_every = {eval_every}
ckpt_every = {ckpt_every}
valid_max_batches = 2
num_threads = 1
device = "cpu"
seed = 3
"""


def write_corpus(folder: Path, dialogs: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, k in (("train", dialogs), ("valid", 6), ("test", 6)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for _ in range(k):
                turns = [sentence(rng, 2, 7) + "."
                         for _ in range(rng.randint(2, 5))]
                f.write(json.dumps({"turns": turns}) + "\n")
    return folder


def train_cmd(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "training", "train", "--config", str(config), "--out", str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def checkpoint_step(path: Path) -> int | None:
    """The step stored in the checkpoint, None when there is none; raises if it does not load."""
    from training.checkpoint import load

    if not path.exists():
        return None
    _, meta = load(path)
    return int(meta["step"])


def weights(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    from training.checkpoint import load

    tensors, _ = load(run / "checkpoint.safetensors")
    return {"checkpoint": {k: v for k, v in tensors.items() if k.startswith(("model.", "optim."))},
            "bundle": load_file(str(run / "bundle" / "model.safetensors"))}


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Names of tensors that differ (bit for bit) between two runs."""
    import torch

    diff = []
    for part in ("checkpoint", "bundle"):
        x, y = a[part], b[part]
        if set(x) != set(y):
            diff.append(f"{part}: tensor names differ")
            continue
        diff += [f"{part}:{k}" for k in x if not torch.equal(x[k], y[k])]
    return diff


def train_losses(run: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [(r["step"], r["rc_loss"], r["kl"]) for r in rows if "rc_loss" in r and "split" not in r]


def logged_step(run: Path) -> int:
    """The last training step in metrics.jsonl (log_every = 1, so this is the progress), 0 if none."""
    try:
        lines = (run / "metrics.jsonl").read_bytes().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue  # a line torn by the kill
    return 0


def _wait_for(proc: subprocess.Popen[bytes], done: Any, limit_s: float, poll_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        if done():
            return True
        time.sleep(poll_s)
    return False


MODES = ("at a random step", "during checkpoint write", "at a random time")


def run_killed(config: Path, out: Path, kills: int, steps: int, ckpt_every: int, rng: random.Random,
               timeout: float = 600, before_final: Callable[[Path], None] | None = None) -> list[dict[str, Any]]:
    """Start, kill, resume ... ``kills`` times, then let the run finish. Returns one record per start.

    Kill modes, in turn: once the logged step reaches a random step past the next checkpoint; the moment a
    checkpoint's temporary file exists (inside a checkpoint write); at a random time in the first 4 s (start-up:
    reading data, training the tokenizer, resuming)."""
    records: list[dict[str, Any]] = []
    ckpt = out / "checkpoint.safetensors"
    for i in range(kills + 1):
        before = checkpoint_step(ckpt)  # the step a resume must start from
        if i == kills and before_final is not None and before is not None:
            before_final(out)
        logf = out.parent / f"{out.name}.start{i}.log"
        with open(logf, "wb") as lf:
            proc = subprocess.Popen(train_cmd(config, out), cwd=ROOT, env=_env(), stdout=lf,
                                    stderr=subprocess.STDOUT)
            rec: dict[str, Any] = {"start": i, "checkpoint_step_at_start": before}
            t0 = time.monotonic()
            if i < kills:
                mode = MODES[i % len(MODES)]
                if (before or 0) >= steps:  # only the export is left: a kill can land only in time
                    mode = "at a random time"
                rec["mode"] = mode
                if mode == "at a random step":
                    # past the next checkpoint but before the one after, so every such kill loses some steps
                    # and the run still advances: the kills spread over the whole run
                    lo = min(steps, (before or 0) + ckpt_every + 1)
                    target = rng.randint(lo, min(steps, max(lo, (before or 0) + 2 * ckpt_every - 1)))
                    rec["target_step"] = target
                    # metrics.jsonl shows the last start's progress until this one resumes (and truncates it)
                    started = lambda: before is None or b"resumed from" in logf.read_bytes()  # noqa: E731
                    _wait_for(proc, lambda: started() and logged_step(out) >= target, timeout, 0.002)
                elif mode == "during checkpoint write":
                    tmp = out / f"checkpoint.safetensors.tmp{proc.pid}"  # this process's own temporary file
                    rec["tmp_seen"] = _wait_for(proc, tmp.exists, timeout, 0.0002)
                else:
                    time.sleep(rng.uniform(0.0, 4.0))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    rec["progress_at_kill"] = logged_step(out) if out.exists() else 0
            code = proc.wait(timeout)
            rec["seconds"] = round(time.monotonic() - t0, 2)
            rec["exit"] = code
        text = logf.read_text(errors="replace")
        m = re.search(r"resumed from \S+ at step (\d+)", text)
        rec["resumed_at"] = int(m.group(1)) if m else None
        try:
            rec["checkpoint_step_after"] = checkpoint_step(ckpt)
            rec["checkpoint_loads"] = True
        except Exception as e:  # a torn checkpoint: exactly what must never happen
            rec["checkpoint_loads"] = False
            rec["checkpoint_error"] = str(e)
        if "progress_at_kill" in rec:
            # work lost = steps done but not in the checkpoint the next start resumes from; a start killed
            # before it resumed did no steps (metrics.jsonl still shows the previous start's progress)
            fresh = before is None or rec["resumed_at"] is not None
            rec["steps_lost"] = (max(0, rec["progress_at_kill"] - (rec.get("checkpoint_step_after") or 0))
                                 if fresh else 0)
        rec["stray_tmp_files"] = sorted(n for n in os.listdir(out) if ".tmp" in n) if out.exists() else []
        if code not in (0, -signal.SIGKILL):
            rec["log_tail"] = text[-1500:]
        records.append(rec)
        if code == 0:
            break
    return records


def check(records: list[dict[str, Any]], diff: list[str], same_losses: bool, ckpt_every: int) -> list[str]:
    problems = []
    for r in records:
        if not r["checkpoint_loads"]:
            problems.append(f"start {r['start']}: the latest checkpoint does not load: {r['checkpoint_error']}")
        if r["checkpoint_step_at_start"] is not None and r["resumed_at"] not in (None, r["checkpoint_step_at_start"]):
            problems.append(f"start {r['start']}: resumed at {r['resumed_at']}, the last checkpoint was at "
                            f"step {r['checkpoint_step_at_start']}")
        if r["exit"] not in (0, -signal.SIGKILL):
            problems.append(f"start {r['start']}: exit status {r['exit']}: {r.get('log_tail', '')[-300:]}")
        if r.get("steps_lost", 0) > ckpt_every:
            problems.append(f"start {r['start']}: {r['steps_lost']} steps lost (checkpoints every {ckpt_every})")
    last = records[-1] if records else None
    if last and last["checkpoint_step_at_start"] is not None and last["resumed_at"] != last["checkpoint_step_at_start"]:
        problems.append("the final start did not resume from the last checkpoint")
    if last and any(n.startswith("checkpoint.safetensors.tmp") for n in last["stray_tmp_files"]):
        problems.append(f"temporary checkpoint files left behind: {last['stray_tmp_files']}")
    if records and records[-1]["exit"] != 0:
        problems.append("the killed run never finished")
    if diff:
        problems.append(f"final weights differ from the uninterrupted run: {diff[:5]}")
    if not same_losses:
        problems.append("the logged training losses differ from the uninterrupted run")
    return problems


def killtest(work: Path, kills: int = 6, steps: int = 200, ckpt_every: int = 20, seed: int = 0,
             before_final: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """The whole test in ``work``; ``before_final(run_dir)`` may damage the run before its last start."""
    work.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(work / "corpus")
    config = work / "killtest.toml"
    config.write_text(CONFIG.format(corpus=corpus, steps=steps, ckpt_every=ckpt_every,
                                     eval_every=max(1, steps // 4)))
    ref, killed = work / "reference", work / "killed"
    t0 = time.monotonic()
    r = subprocess.run(train_cmd(config, ref), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{r.stderr[-2000:]}")
    ref_seconds = time.monotonic() - t0
    log.info("reference run: %d steps in %.1f s", steps, ref_seconds)
    records = run_killed(config, killed, kills, steps, ckpt_every, random.Random(seed),
                         before_final=before_final)
    diff = same_weights(weights(ref), weights(killed)) if records[-1]["exit"] == 0 else ["(no final weights)"]
    same_losses = records[-1]["exit"] == 0 and train_losses(ref) == train_losses(killed)
    n_kills = sum(1 for r in records if r["exit"] == -signal.SIGKILL)
    summary = {
        "steps": steps, "ckpt_every": ckpt_every, "reference_seconds": round(ref_seconds, 1),
        "kills": n_kills, "resumes": sum(1 for r in records if r["resumed_at"] is not None),
        "kills_during_checkpoint_write": sum(1 for r in records if r.get("tmp_seen")),
        "max_steps_lost": max((r.get("steps_lost", 0) for r in records), default=0),
        "stray_tmp_files_at_end": records[-1]["stray_tmp_files"],
        "identical_weights": not diff, "identical_losses": same_losses,
        "records": records,
    }
    summary["problems"] = check(records, diff, same_losses, ckpt_every)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reliability.killtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="work folder (corpus, runs, logs)")
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--ckpt-every", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seed for the kill times")
    p.add_argument("--json", help="write the summary here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    summary = killtest(Path(args.out), args.kills, args.steps, args.ckpt_every, args.seed)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    for prob in summary["problems"]:
        log.error("FAIL: %s", prob)
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
