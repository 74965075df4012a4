"""The training configuration: a TOML or YAML file, dotted ``--set`` overrides, strict keys."""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from model.config import PRESETS, CVAEConfig

from .data import CORPORA, Source, mix_style
from .schedules import ScheduleConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "swda"  # swda | dailydialog | chitchat | jsonl | mix
    dir: str = "../shared/data/swda"  # the corpus folder (unused with mix)
    # corpus = "mix": a list of {corpus, dir, weight} tables (training.data.Source)
    mix: list[dict[str, Any]] = field(default_factory=list)
    max_context_turns: int = 10
    max_utt_len: int = 40  # tokens kept per utterance
    max_train_dialogs: int = 0  # 0 = all; a slice for quick runs
    max_valid_dialogs: int = 0
    use_topic: bool = False
    use_meta: bool = False

    def __post_init__(self) -> None:
        if self.corpus not in (*CORPORA, "mix"):
            raise ValueError(f"corpus must be one of {', '.join((*CORPORA, 'mix'))}, got {self.corpus!r}")
        if self.corpus == "mix":
            if not isinstance(self.mix, list) or not self.mix:
                raise ValueError("corpus = \"mix\" needs data.mix: a list of {corpus, dir, weight} tables")
            for i, raw in enumerate(self.mix):
                if isinstance(raw, dict) and raw.get("corpus") == "mix":
                    raise ValueError(f"data.mix[{i}].corpus: a mix cannot hold a mix")
                Source.parse(raw, f"data.mix[{i}]")
        elif self.mix:
            raise ValueError("data.mix is only read with corpus = \"mix\"")

    @property
    def sources(self) -> list[Source]:
        if self.corpus == "mix":
            return [Source.parse(raw, f"data.mix[{i}]") for i, raw in enumerate(self.mix)]
        return [Source(self.corpus, self.dir)]

    @property
    def style(self) -> str:
        return mix_style([s.corpus for s in self.sources])


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 8000
    # The decoding lexicon (model.lexicon): words seen at least this many times in the training split.
    # 0 leaves it out of the bundle (unconstrained decoding). 20 was chosen by measurement (docs/quality.md).
    lexicon_min_count: int = 20


@dataclass(frozen=True)
class ModelSection:
    preset: str = "cpu"
    overrides: dict[str, Any] = field(default_factory=dict)  # any CVAEConfig field


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 10000
    batch_size: int = 30
    lr: float = 1e-3
    grad_clip: float = 5.0
    seed: int = 1
    log_every: int = 50
    eval_every: int = 1000
    ckpt_every: int = 500
    valid_max_batches: int = 0  # 0 = the whole validation split
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 (mixed precision: CUDA, or a CPU with AVX512-BF16/AMX, checked at start)
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    bucket: bool = True  # batch examples of similar length together (less padding)
    export_dtype: str = "float32"  # float32 | float16 weights in the exported bundle
    export: str = "best"  # best (lowest validation ELBO) | last: which weights the bundle gets
    bow_weight: float = 1.0  # weight of the bag-of-words loss (Zhao et al.'s auxiliary loss); 0 = without it
    rs_weight: float = 0.0  # weight of the response-selection loss (model.rs_dim > 0: PLATO's RS objective)
    init_from: str = ""  # a bundle whose weights (and tokenizer) a new run starts from; "" = random weights
    export_best: bool = False  # also write bundle-best/ with the lowest-validation-ELBO weights (for studies)


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelSection = field(default_factory=ModelSection)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = {"preset": self.model.preset, **self.model.overrides}
        return d

    def model_config(self, vocab_size: int, n_topics: int = 0, meta_dim: int = 0,
                     n_acts: int = 0) -> CVAEConfig:
        base = {**PRESETS[self.model.preset], **self.model.overrides}
        base.update(vocab_size=vocab_size, max_context_turns=self.data.max_context_turns,
                    max_utt_len=self.data.max_utt_len,
                    n_topics=n_topics if self.data.use_topic else 0,
                    meta_dim=meta_dim if self.data.use_meta else 0)
        if base.get("kgcvae"):
            base["n_acts"] = n_acts
        return CVAEConfig.from_dict(base)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '(top)'} must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''}: "
                          + ", ".join(prefix + k for k in unknown))
    kwargs = {}
    for k, v in d.items():
        sub = {"data": DataConfig, "tokenizer": TokenizerConfig, "schedule": ScheduleConfig,
               "train": LoopConfig}.get(k) if cls is RunConfig else None
        kwargs[k] = _build(sub, v, f"{prefix}{k}.") if sub else v
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        msg = str(e)
        where = prefix.rstrip(".") or "config"
        # messages that already name their key ("schedule.kind must be ...") are not prefixed again
        raise ConfigError(msg if msg.startswith(prefix) and prefix else f"{where}: {msg}") from None
    # Light type checks so that "--set train.steps=abc" fails here, not deep inside the loop.
    for k, v in kwargs.items():
        default = getattr(cls(), k) if k in known else None
        if isinstance(default, bool) and not isinstance(v, bool):
            raise ConfigError(f"{prefix}{k} must be true or false, got {v!r}")
        if isinstance(default, int) and not isinstance(default, bool) and (
                not isinstance(v, int) or isinstance(v, bool)):
            raise ConfigError(f"{prefix}{k} must be an integer, got {v!r}")
        if isinstance(default, float) and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise ConfigError(f"{prefix}{k} must be a number, got {v!r}")
        if isinstance(default, str) and not isinstance(v, str):
            raise ConfigError(f"{prefix}{k} must be a string, got {v!r}")
    return obj


# Ranges of numeric fields (inclusive lower bound, exclusive upper bound when given): a value outside fails
# with its key here, not later as a division by zero or a silent no-op.
RANGES: dict[str, tuple[float, float | None]] = {
    "data.max_context_turns": (1, None), "data.max_utt_len": (1, None), "data.max_train_dialogs": (0, None),
    "data.max_valid_dialogs": (0, None), "tokenizer.vocab_size": (8, None), "tokenizer.lexicon_min_count": (0, None),
    "train.steps": (1, None), "train.batch_size": (1, None), "train.lr": (1e-12, 10.0),
    "train.grad_clip": (1e-12, None), "train.seed": (0, 2**63), "train.log_every": (1, None),
    "train.eval_every": (1, None), "train.ckpt_every": (1, None), "train.valid_max_batches": (0, None),
    "train.num_threads": (0, 1024), "train.bow_weight": (0.0, None), "train.rs_weight": (0.0, None),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "train.amp": ("none", "bf16"), "train.export_dtype": ("float32", "float16"), "train.export": ("best", "last"),
}


def _check_ranges(cfg: RunConfig) -> None:
    for key, (lo, hi) in RANGES.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if not math.isfinite(v) or v < lo or (hi is not None and v >= hi):
            bound = f">= {lo:g}" + (f" and < {hi:g}" if hi is not None else "")
            raise ConfigError(f"{key} must be {bound}, got {v!r}")
    for key, options in CHOICES.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if v not in options:
            raise ConfigError(f"{key} must be one of {', '.join(options)}, got {v!r}")


def from_dict(raw: dict[str, Any]) -> RunConfig:
    raw = json.loads(json.dumps(raw))  # deep copy
    model_raw = raw.pop("model", {}) or {}
    if not isinstance(model_raw, dict):
        raise ConfigError("config section model must be a table")
    cfg = _build(RunConfig, raw, "")
    preset = model_raw.pop("preset", "cpu")
    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cvae_fields = {f.name for f in fields(CVAEConfig)}
    derived = {"vocab_size", "max_context_turns", "max_utt_len", "n_topics", "meta_dim", "n_acts"}
    unknown = sorted(set(model_raw) - cvae_fields)
    if unknown:
        raise ConfigError("unknown config key: " + ", ".join("model." + k for k in unknown))
    fixed = sorted(set(model_raw) & derived)
    if fixed:
        raise ConfigError("these model keys are derived from the data and tokenizer sections: "
                          + ", ".join("model." + k for k in fixed))
    try:
        # n_acts comes from the data; a placeholder lets the kgCVAE switch validate here.
        CVAEConfig.from_dict({**PRESETS[preset], **model_raw, "n_acts": 2})
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e).replace("CVAEConfig.", "model.")) from None
    if model_raw.get("kgcvae") and "kgcvae_style" not in model_raw:
        # recorded in the run's config.json, so that a report (and a resume) knows which kgCVAE ran
        model_raw["kgcvae_style"] = CVAEConfig().kgcvae_style
    cfg = dataclasses.replace(cfg, model=ModelSection(preset=preset, overrides=model_raw))
    _check_ranges(cfg)
    return cfg


def find_config(path: str | Path) -> Path:
    """A config file: the path itself, or a name in training/configs with or without .toml/.yaml/.yml."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p.name, *(CONFIG_DIR / (p.name + ext) for ext in (".toml", ".yaml", ".yml"))):
        if candidate.is_file():
            return candidate
    names = ", ".join(sorted(c.stem for c in CONFIG_DIR.glob("*.toml")))
    raise ConfigError(f"{path}: config file not found (neither a file nor a name in training/configs: {names})")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        p = find_config(path)
        text = p.read_text()
        try:
            raw = (tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)) or {}
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{p}: cannot parse: {e}") from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip(), _parse_value(value.strip()))
    return from_dict(raw)
