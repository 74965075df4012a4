"""The model's configuration: a frozen dataclass stored in every checkpoint and bundle."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

# Special token ids, fixed so that every tokenizer we train agrees with the model.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# A user-defined SentencePiece symbol: the start-of-dialog marker turn (Zhao et al.'s "<d>").
DIALOG_START = "<d>"
KGCVAE_STYLES = ("zhao", "legacy")


@dataclass(frozen=True)
class CVAEConfig:
    """Sizes and switches of the CVAE / kgCVAE of Zhao et al. (ACL 2017).

    All dimensions are feature sizes; ``utt_hidden`` is per direction of the bidirectional
    utterance encoder, so an utterance vector has ``2 * utt_hidden`` features.
    """

    vocab_size: int = 8000
    embed_dim: int = 128
    utt_hidden: int = 128
    ctx_hidden: int = 256
    latent_dim: int = 64
    dec_hidden: int = 256
    bow_hidden: int = 256
    prior_hidden: int = 128
    # Conditioning on the conversation topic and on speaker metadata (SwDA has both).
    n_topics: int = 0  # 0 disables topic conditioning; index 0 is "unknown"
    topic_dim: int = 30
    meta_dim: int = 0  # 0 disables speaker-metadata conditioning
    # kgCVAE: predict the response's dialog act from (c, z) and condition the decoder on it.
    kgcvae: bool = False
    n_acts: int = 0  # index 0 is "unknown" and is never a target
    act_dim: int = 30
    # "zhao": as Zhao et al.'s code (the act embedding initialises the decoder and is fed at every step; the
    # softmax-weighted act embedding at inference; the recognition network sees tanh(W y + b)). "legacy": this
    # project's first kgCVAE (initial state only, argmax act, raw embedding), kept so that models trained with it
    # load and decode as before: a stored config without the field is legacy (see from_stored).
    kgcvae_style: str = "zhao"
    # Response selection (PLATO's RS objective, Bao et al. 2020): does this reply follow this context? A head
    # scoring (c, x) pairs, trained beside the CVAE against other replies of the batch and a turn from elsewhere
    # in the same dialog; the reranker's coherence term. 0: no head.
    rs_dim: int = 0
    # Regularisation.
    dropout: float = 0.0
    word_dropout: float = 0.0  # probability of replacing a decoder input token with <unk>
    # Limits the model was trained with; serving uses the same.
    max_context_turns: int = 10
    max_utt_len: int = 40
    max_decode_len: int = 40

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"CVAEConfig.{f.name} must be a non-negative integer, got {v!r}")
            if f.type == "bool" and not isinstance(v, bool):
                raise ValueError(f"CVAEConfig.{f.name} must be true or false, got {v!r}")
            if f.type == "str" and not isinstance(v, str):
                raise ValueError(f"CVAEConfig.{f.name} must be a string, got {v!r}")
            if f.type == "float" and (isinstance(v, bool) or not isinstance(v, (int, float))
                                      or not math.isfinite(v)):
                raise ValueError(f"CVAEConfig.{f.name} must be a finite number, got {v!r}")
        for name in ("vocab_size", "embed_dim", "utt_hidden", "ctx_hidden", "latent_dim", "dec_hidden", "bow_hidden",
                     "prior_hidden", "topic_dim", "act_dim", "max_context_turns", "max_utt_len", "max_decode_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"CVAEConfig.{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("dropout", "word_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"CVAEConfig.{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if self.kgcvae_style not in KGCVAE_STYLES:
            raise ValueError(f"CVAEConfig.kgcvae_style must be one of {', '.join(KGCVAE_STYLES)}, "
                             f"got {self.kgcvae_style!r}")
        if self.kgcvae and self.n_acts < 2:
            raise ValueError("kgcvae needs n_acts >= 2 (index 0 is 'unknown')")
        if self.vocab_size <= EOS_ID:
            raise ValueError("vocab_size is too small")

    @property
    def utt_dim(self) -> int:
        return 2 * self.utt_hidden

    @property
    def cond_dim(self) -> int:
        """Size of the condition c: context vector, topic embedding, speaker metadata."""
        return self.ctx_hidden + (self.topic_dim if self.n_topics else 0) + self.meta_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CVAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CVAEConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_stored(cls, d: dict[str, Any]) -> "CVAEConfig":
        """A config read from a bundle or checkpoint: one written before ``kgcvae_style`` existed holds the
        legacy kgCVAE, so it loads as legacy (its weights have that layout and it must decode as it did)."""
        return cls.from_dict({"kgcvae_style": "legacy", **d})

    @property
    def zhao_kgcvae(self) -> bool:
        return self.kgcvae and self.kgcvae_style == "zhao"

    def replace(self, **changes: Any) -> "CVAEConfig":
        return self.from_dict({**self.to_dict(), **changes})


PRESETS: dict[str, dict[str, Any]] = {
    # Zhao et al.'s sizes (NeuralDialog-CVAE config for SwDA).
    "zhao": dict(
        vocab_size=10000, embed_dim=200, utt_hidden=300, ctx_hidden=600, latent_dim=200,
        dec_hidden=400, bow_hidden=400, prior_hidden=400, topic_dim=30, act_dim=30,
    ),
    # Small enough to train a usable model in about an hour on two CPU cores and to serve
    # n=5 replies well inside 50 ms there.
    "cpu": dict(
        vocab_size=8000, embed_dim=128, utt_hidden=128, ctx_hidden=256, latent_dim=64,
        dec_hidden=256, bow_hidden=256, prior_hidden=128,
    ),
    # For tests and the `tiny` config.
    "tiny": dict(
        vocab_size=64, embed_dim=16, utt_hidden=16, ctx_hidden=16, latent_dim=8,
        dec_hidden=16, bow_hidden=16, prior_hidden=16, topic_dim=4, act_dim=4,
    ),
}


def preset(name: str, **overrides: Any) -> CVAEConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return CVAEConfig.from_dict({**PRESETS[name], **overrides})
