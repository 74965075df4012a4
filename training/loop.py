"""The training loop: explicit, resumable, rank-0 logging, optional DistributedDataParallel.

The objective is rc_loss + beta(t) * kl + w * bow_loss (+ act_loss for kgCVAE) (+ r * rs_loss with a
response-selection head), w = train.bow_weight (1 by default; 0 trains without the bag-of-words loss, which is
still logged), r = train.rs_weight; beta comes from the
schedule, a pure function of the step, so a resumed run computes the same values.
"""
from __future__ import annotations

import ast
import json
import logging
import math
import os
import random
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from model.bundle import save_bundle
from model.cvae import CVAE
from model.files import DeviceError, WriteError, atomic_write, pick_device
from model.lexicon import Lexicon
from model.quantize import cpu_has_bf16
from model.replylm import ReplyLM
from model.recurrent import keep_freed_memory
from model.text import normalize
from model.tokenizer import Tokenizer

from . import checkpoint as ckpt
from .batching import BatchStream, ExampleSet, Vocabs, encode_turns
from .config import RunConfig
from .data import read_sources
from .evaluate import posterior_metrics
from .schedules import beta_at, lr_at

log = logging.getLogger("training")


class RunError(RuntimeError):
    pass


class Stopped(Exception):
    """The run was asked to stop (SIGTERM or SIGINT) and wrote a checkpoint at ``step``: the same command
    resumes it exactly."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.step, self.signum = step, signum


# Settings a resumed run may change: they decide how fast the same arithmetic runs, not what it computes.
RESUME_MAY_CHANGE = ("train.num_threads",)


def load_split(cfg: RunConfig, split: str) -> list:
    dialogs = read_sources(cfg.data.sources, split)
    limit = cfg.data.max_train_dialogs if split == "train" else cfg.data.max_valid_dialogs
    return dialogs[:limit] if limit else dialogs


def check_elastic_env(env) -> None:
    """Refuse the one torch elastic set-up whose restarts cannot work: agents on several nodes sharing the
    rendezvous store with the workers (torch's default). Each agent counts its restarts alone, so after a
    worker dies the ranks' counts, which scope the workers' keys in that shared store, disagree and a new
    worker reads the dead one's address: the process group never forms (gloo connectFullMesh or NCCL
    connect times out; pytorch/pytorch#135712). With TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 given to the
    launcher, each rendezvous round gets a store of its own and restarts resume from the checkpoint."""
    world, local = int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1)))
    restarts = int(env.get("TORCHELASTIC_MAX_RESTARTS", 0) or 0)
    if world > local and restarts > 0 and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        raise RunError("torchrun on several nodes with --max-restarts needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
                       "in the launcher's environment (on every node): with the shared store a restarted worker "
                       "cannot rejoin (pytorch/pytorch#135712); docs/deploy.md, training on several nodes")


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: str | Path):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.is_main = self.rank == 0
        lc = cfg.train
        keep_freed_memory()  # see model.recurrent: saves the page faults of re-allocating each step's tensors
        if lc.num_threads:
            torch.set_num_threads(lc.num_threads)
        try:
            self.device = pick_device(lc.device)
        except DeviceError as e:
            raise RunError(f"train.device: {e}") from None
        if self.world > 1:
            if self.device.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", 0))
                self.device = torch.device("cuda", local)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                check_elastic_env(os.environ)
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if lc.amp not in ("none", "bf16"):
            raise RunError(f"train.amp must be none or bf16, got {lc.amp!r}")
        self.amp = lc.amp == "bf16"
        if self.amp and self.device.type == "cpu" and not cpu_has_bf16():
            raise RunError("train.amp=bf16 on the CPU needs bf16 matrix instructions (AVX512-BF16 or AMX), which "
                           "this CPU lacks: bf16 would run slower than fp32 here; use train.amp=none")
        self.ckpt_path = self.out / "checkpoint.safetensors"

    # ----- set-up -----------------------------------------------------------------------------
    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def prepare(self) -> None:
        cfg = self.cfg
        cfg_path = self.out / "config.json"
        resolved = cfg.to_dict()
        if self._has_checkpoint() and cfg_path.exists():
            saved = json.loads(cfg_path.read_text())
            model_saved = saved.get("model")
            if isinstance(model_saved, dict) and model_saved.get("kgcvae") and "kgcvae_style" not in model_saved:
                model_saved["kgcvae_style"] = "legacy"  # a run started before the field: resume it as it was
            diff = [k for k in _diff(saved, resolved) if k not in RESUME_MAY_CHANGE
                    and not _added_at_default(k, saved, resolved)]
            if diff:
                hint = (" (a kgCVAE run started before model.kgcvae_style existed is the legacy one: "
                        "--set model.kgcvae_style=legacy)" if "model.kgcvae_style" in diff else "")
                raise RunError(f"{self.out} holds a run with a different config ({', '.join(diff)}); "
                               f"resume with the same config or choose another --out{hint}")
        self.style = cfg.data.style
        log.info("reading %s", ", ".join(f"{s.corpus} from {s.dir}" for s in cfg.data.sources))
        train_dialogs = load_split(cfg, "train")
        valid_dialogs = load_split(cfg, "valid")
        self.out.mkdir(parents=True, exist_ok=True)  # once the data reads: a failed start leaves nothing behind
        if self.is_main and not (self._has_checkpoint() and cfg_path.exists()):
            atomic_write(cfg_path, json.dumps(resolved, indent=2))
        tok_path = self.out / "tokenizer.model"
        init = self._init_bundle()
        if self.is_main and not tok_path.exists() and init is not None:
            atomic_write(tok_path, (init.path / "tokenizer.model").read_bytes())  # its weights need its pieces
        if self.is_main and not tok_path.exists():
            log.info("training a %d-piece SentencePiece model", cfg.tokenizer.vocab_size)
            texts = [normalize(t.text, self.style) for d in train_dialogs for t in d.turns]
            Tokenizer.train(texts, cfg.tokenizer.vocab_size).save(tok_path)
        self._barrier()
        self.tokenizer = Tokenizer.load(tok_path)
        self.lexicon = build_lexicon(train_dialogs, self.style, cfg.tokenizer.lexicon_min_count)
        train_ids = encode_turns(train_dialogs, self.tokenizer, self.style)  # once, for the reply model and the set
        self.reply_lm = ReplyLM.build(train_ids, self.tokenizer.vocab_size)
        self.vocabs = Vocabs.build(train_dialogs)
        if cfg.model.overrides.get("kgcvae") and len(self.vocabs.acts) < 2:
            raise RunError(f"model.kgcvae needs dialog-act labels, and the {cfg.data.corpus} training "
                           "split has none: set model.kgcvae=false")
        mc = cfg.model_config(self.tokenizer.vocab_size, n_topics=len(self.vocabs.topics),
                              meta_dim=self.vocabs.meta_dim, n_acts=len(self.vocabs.acts))
        args = (self.tokenizer, self.style, self.vocabs, cfg.data.max_context_turns, cfg.data.max_utt_len)
        if mc.rs_dim and not cfg.train.rs_weight:
            log.warning("model.rs_dim is set but train.rs_weight is 0: the response-selection head stays untrained")
        self.train_set = ExampleSet(train_dialogs, *args, ids=train_ids, distractors=mc.rs_dim > 0)
        self.valid_set = ExampleSet(valid_dialogs, *args, distractors=mc.rs_dim > 0)
        if len(self.train_set) == 0:
            raise RunError("the training split has no examples")
        log.info("examples: train %d, valid %d; vocabulary %d", len(self.train_set),
                 len(self.valid_set), self.tokenizer.vocab_size)
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        self.model = CVAE(mc).to(self.device)
        if init is not None and not self._has_checkpoint():
            if init.config != mc:
                diff = [k for k, v in mc.to_dict().items() if init.config.to_dict().get(k) != v]
                raise RunError(f"train.init_from: {init.path} holds another model ({', '.join(diff)} differ): "
                               "give the config it was trained with")
            self.model.load_state_dict(init.model.state_dict())
            log.info("initialised from %s (sha256 %s); the schedule starts at step 0", init.path, init.sha256[:12])
        self.net: torch.nn.Module = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr)
        self.stream = BatchStream(self.train_set, cfg.train.seed, cfg.train.batch_size, cfg.train.bucket)
        self.step, self.cursor, self.best = 0, 0, math.inf
        self.cpu_s = self.wall_s = 0.0  # the run's process CPU time and wall time so far, over every resume
        if self._has_checkpoint():
            self._resume()
        elif self.is_main:
            # A start killed before its first checkpoint leaves rows that this start logs again.
            _truncate_metrics(self.out / "metrics.jsonl", 0)

    def _init_bundle(self) -> Any:
        """The bundle of train.init_from (a run whose folder was lost continues from its last committed
        weights: a new run, at step 0, from those weights), or None."""
        if not self.cfg.train.init_from or self._has_checkpoint():
            return None
        from model.bundle import BundleError, load_bundle

        try:
            return load_bundle(self.cfg.train.init_from)
        except BundleError as e:
            raise RunError(f"train.init_from: {e}") from None

    # ----- checkpoints ------------------------------------------------------------------------
    def _has_checkpoint(self) -> bool:
        """Whether there is a checkpoint to resume from: the current one, or only the previous one (what a kill
        inside a rotation leaves where hard links are not supported)."""
        return self.ckpt_path.exists() or ckpt.previous(self.ckpt_path).exists()

    def _rng_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """This process's random generators, as checkpoint tensors and metadata."""
        tensors = {"rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        np_state: Any = np.random.get_state()  # the legacy tuple (name, keys, pos, has_gauss, cached)
        return tensors, {"rng_python": repr(random.getstate()),
                         "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}

    def _save(self) -> None:
        # Every rank's generators, not rank 0's alone: the ranks draw different amounts (dropout masks follow
        # their batches' shapes), so a resume with rank 0's state everywhere would not continue exactly.
        rng_t, rng_meta = self._rng_state()
        ranks: list[Any] = [(rng_t, rng_meta)]
        if self.world > 1:
            ranks = [None] * self.world
            dist.all_gather_object(ranks, ({k: v.cpu() for k, v in rng_t.items()}, rng_meta))
        if not self.is_main:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_t, opt_meta = ckpt.optimizer_state(self.opt)
        tensors.update(opt_t)
        tensors.update(rng_t)
        for r, (t, _) in enumerate(ranks[1:], 1):
            tensors.update({f"{k}.rank{r}": v for k, v in t.items()})
        cpu_s, wall_s = self._clock()
        meta = {"step": self.step, "cursor": self.cursor, "best": self.best, "optimizer": opt_meta,
                "cpu_s": cpu_s, "wall_s": wall_s,
                "world": self.world, "config": self.cfg.to_dict(), "model_config": self.model.cfg.to_dict(),
                **rng_meta, "rng_ranks": [m for _, m in ranks[1:]]}
        ckpt.save(self.ckpt_path, tensors, meta)

    def _resume(self) -> None:
        # The newest checkpoint whose sha256 holds; a damaged one is refused by path, and kept aside (so that
        # the next save does not rotate it into the previous one's place).
        tensors, meta, path, refused = ckpt.load_latest(self.ckpt_path)
        for reason in refused:
            log.error("refused %s", reason)
        self._barrier()  # every rank has read its checkpoint before the damaged one moves
        if refused and self.is_main and path != self.ckpt_path and self.ckpt_path.exists():
            aside = self.ckpt_path.with_name(f"{self.ckpt_path.stem}.corrupt{self.ckpt_path.suffix}")
            os.replace(self.ckpt_path, aside)
            log.warning("moved the refused checkpoint to %s (for inspection; safe to delete)", aside)
        if meta.get("world", 1) != self.world:
            raise RunError(f"{path}: saved with {meta.get('world')} processes, resumed "
                           f"with {self.world}: the data order would differ")
        try:
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            ckpt.restore_optimizer(self.opt, tensors, meta["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise ckpt.CheckpointError(f"{path}: does not fit this model: {e}") from None
        # This rank's generators (a checkpoint written before they were kept per rank has rank 0's alone).
        own = meta.get("rng_ranks") or []
        suffix, rng_meta = (f".rank{self.rank}", own[self.rank - 1]) if 0 < self.rank <= len(own) else ("", meta)
        torch.set_rng_state(tensors["rng.torch" + suffix])
        if self.device.type == "cuda" and "rng.cuda" + suffix in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda" + suffix], self.device)
        random.setstate(ast.literal_eval(rng_meta["rng_python"]))
        ns = rng_meta["rng_numpy"]
        np.random.set_state((ns[0], np.array(ns[1], dtype=np.uint32), *ns[2:]))
        self.step, self.cursor, self.best = meta["step"], meta["cursor"], meta["best"]
        self.cpu_s, self.wall_s = meta.get("cpu_s", 0.0), meta.get("wall_s", 0.0)
        if self.is_main:
            _truncate_metrics(self.out / "metrics.jsonl", self.step)
        log.info("resumed from %s at step %d", path, self.step)

    # ----- the loop ---------------------------------------------------------------------------
    def _clock(self) -> tuple[float, float]:
        """(CPU seconds of this process, all threads, wall seconds) spent in the loop since step 0, over every
        resume; what a budget of training time is counted in."""
        return (self.cpu_s + time.process_time() - self._cpu0, self.wall_s + time.perf_counter() - self._wall0)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop = signum

    def _stop_requested(self) -> int:
        """The signal that asked this run to stop, 0 if none; under DistributedDataParallel every rank learns
        of it at the same step (a 1-element all-reduce per step), so all stop together."""
        if self.world == 1:
            return self._stop
        flag = torch.tensor([self._stop], dtype=torch.int64,
                            device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
    def _log(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        path = self.out / "metrics.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise WriteError(path, e.errno or 0, e.strerror or str(e),
                             "its last line may be torn, and a resume drops it") from e

    def validate(self) -> dict[str, float]:
        lc = self.cfg.train
        # A fixed generator for the posterior samples: validation leaves the training RNG alone.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(lc.seed + 1)
            res = posterior_metrics(self.model, self.valid_set, lc.batch_size * 2, self.device,
                                    max_batches=lc.valid_max_batches, amp=self.amp, latent=False)
        self.model.train()
        return res

    def run(self) -> Path:
        self.prepare()
        cfg, lc = self.cfg, self.cfg.train
        T = lc.steps
        self.model.train()
        bar = tqdm(total=T, initial=self.step, disable=not self.is_main or None, desc=cfg.name,
                   dynamic_ncols=True)
        window: dict[str, Any] = {"rc": 0.0, "kl": 0.0, "bow": 0.0, "act": 0.0, "rs": 0.0, "nll": 0.0, "tok": 0,
                                  "n": 0, "gn": 0.0}  # floats, or tensors on the device between log steps
        t0 = time.perf_counter()
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext())
        # SIGTERM (a pause, a pod's eviction) or Ctrl-C: finish the step, checkpoint, stop (Stopped).
        self._stop = 0
        previous = {}
        if threading.current_thread() is threading.main_thread():  # Python sets handlers there only
            previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._loop(bar, window, t0, autocast)
        finally:
            for s, h in previous.items():
                signal.signal(s, signal.SIG_DFL if h is None else h)
        bar.close()
        self._barrier()
        bundle = self.out / "bundle"
        if self.is_main:
            self.export(bundle)
            if self.cfg.train.export_best and (self.out / "best.safetensors").exists():
                self.export(self.out / "bundle-best", which="best")
        self._barrier()
        return bundle

    def _loop(self, bar: Any, window: dict[str, Any], t0: float, autocast: Any) -> None:
        cfg, lc = self.cfg, self.cfg.train
        T = lc.steps
        while self.step < T:
            t = self.step + 1
            beta = beta_at(t, T, cfg.schedule)
            lr = lr_at(t, T, lc.lr, cfg.schedule)
            for g in self.opt.param_groups:
                g["lr"] = lr
            batch = self.train_set.batch(self.stream.indices(self.cursor + self.rank)).to(self.device)
            self.cursor += self.world
            with autocast:
                out = self.net(batch)
            loss = (out["rc_loss"] + beta * out["kl"] + lc.bow_weight * out["bow_loss"] + out["act_loss"]
                    + lc.rs_weight * out["rs_loss"])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), lc.grad_clip)
            self.opt.step()
            self.step = t
            # Sums stay on the device until a log step: reading them each step would synchronise.
            for k, v in (("rc", out["rc_loss"]), ("kl", out["kl"]), ("bow", out["bow_loss"]),
                         ("act", out["act_loss"]), ("rs", out["rs_loss"]), ("nll", out["rc_nll_sum"]), ("gn", gn)):
                window[k] = window[k] + v.detach().float()
            window["tok"] += int(out["n_tokens"])
            window["n"] += 1
            bar.update(1)
            if t % lc.log_every == 0 or t == T:
                window = {k: float(v) for k, v in window.items()}
                dt = time.perf_counter() - t0
                n = window["n"]
                row = {"step": t, "epoch": round(self.stream.epoch_of(self.cursor), 4), "beta": beta,
                       "lr": lr, "rc_loss": window["rc"] / n, "kl": window["kl"] / n,
                       "bow_loss": window["bow"] / n, "act_loss": window["act"] / n, "rs_loss": window["rs"] / n,
                       "rc_ppl": math.exp(min(window["nll"] / max(window["tok"], 1), 50)),
                       "grad_norm": window["gn"] / n,
                       "tokens_per_s": window["tok"] * self.world / dt, "batches_per_s": n / dt}
                row["cpu_s"], row["wall_s"] = (round(x, 2) for x in self._clock())
                self._log(row)
                bar.set_postfix(beta=f"{beta:.2f}", rc=f"{row['rc_loss']:.1f}", kl=f"{row['kl']:.2f}")
                if bar.disable and self.is_main:  # no terminal: a progress line instead of the bar
                    left = (T - t) / max(row["batches_per_s"], 1e-9)
                    log.info("step %d/%d (%.0f%%) %.2f batches/s, %.0f tokens/s, about %s left; rc %.1f kl %.2f "
                             "beta %.2f", t, T, 100 * t / T, row["batches_per_s"], row["tokens_per_s"],
                             _duration(left), row["rc_loss"], row["kl"], beta)
                window = dict.fromkeys(window, 0.0)
                window["tok"] = window["n"] = 0
            if self.is_main and (t % lc.eval_every == 0 or t == T):
                res = self.validate()
                cpu_s, wall_s = (round(x, 2) for x in self._clock())
                self._log({"step": t, "split": "valid", "beta": beta, "cpu_s": cpu_s, "wall_s": wall_s, **res})
                log.info("step %d valid: rc_ppl %.2f kl %.3f elbo %.2f", t, res["rc_ppl"], res["kl"],
                         res["elbo"])
                if res["elbo"] < self.best:
                    self.best = res["elbo"]
                    weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
                    atomic_write(self.out / "best.safetensors", lambda tmp: save_file(
                        weights, str(tmp), metadata={"step": str(t), "elbo": str(res["elbo"])}))
            stop = self._stop_requested() if t < T else 0
            if t % lc.ckpt_every == 0 or t == T or stop:
                self._save()
            if stop:
                bar.close()
                raise Stopped(t, stop)
            if t % lc.log_every == 0:
                t0 = time.perf_counter()

    def export(self, bundle: Path, which: str | None = None) -> None:
        """Write a bundle with the weights ``which`` names (default: train.export): "best", the lowest
        validation ELBO (the last step where no validation ran yet), or "last"."""
        lc = self.cfg.train
        which = which or lc.export
        if which not in ("best", "last") or lc.export_dtype not in ("float32", "float16"):
            raise RunError("train.export must be best or last, train.export_dtype float32 or float16")
        best = self.out / "best.safetensors"
        model = CVAE(self.model.cfg)
        selected, how = self.step, "last step"
        if which == "best" and best.exists():
            with safe_open(str(best), framework="pt") as f:
                selected = int((f.metadata() or {}).get("step", -1))
            model.load_state_dict(load_file(str(best)))
            how = "lowest validation ELBO"
        else:
            model.load_state_dict(self.model.state_dict())
        dtype = {"float32": torch.float32, "float16": torch.float16}[lc.export_dtype]
        sha = save_bundle(bundle, model.cpu(), self.tokenizer, name=self.cfg.name, text_style=self.style,
                          dtype=dtype, lexicon=self.lexicon, reply_lm=self.reply_lm, extra={"vocabs": self.vocabs.to_dict(),
                                              "data": {"corpus": self.cfg.data.corpus,
                                                       "dir": self.cfg.data.dir,
                                                       "mix": self.cfg.data.mix},
                                              "training": {"config": self.cfg.to_dict(),
                                                           "steps": self.step,
                                                           "selected_step": selected,
                                                           "selected_by": how}})
        log.info("exported %s (sha256 %s)", bundle, sha)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def build_lexicon(dialogs: list, style: str, min_count: int) -> Lexicon | None:
    """The decoding lexicon of a training split (None when min_count is 0)."""
    if min_count <= 0:
        return None
    return Lexicon.build((normalize(t.text, style) for d in dialogs for t in d.turns), min_count)


def build_reply_lm(dialogs: list, style: str, tokenizer: Tokenizer) -> ReplyLM:
    """The reranker's model of replies (model.replylm): every turn of a training split, as pieces."""
    return ReplyLM.build(encode_turns(dialogs, tokenizer, style), tokenizer.vocab_size)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _lookup(d: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return _MISSING
        d = d[part]
    return d


_MISSING = object()


def _added_at_default(key: str, saved: dict, resolved: dict) -> bool:
    """A setting the run's saved config lacks (added to the code after the run started) and the resumed run
    has at its default: the run is the same one."""
    return (_lookup(saved, key) is _MISSING
            and _lookup(resolved, key) == _lookup(RunConfig().to_dict(), key) is not _MISSING)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from: they will be logged again."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue  # a line torn by the kill
    atomic_write(path, "".join(l + "\n" for l in keep))


def train(cfg: RunConfig, out_dir: str | Path) -> Path:
    trainer = Trainer(cfg, out_dir)
    try:
        return trainer.run()
    finally:
        if trainer.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
