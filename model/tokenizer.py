"""SentencePiece tokenizer with the special ids the model expects (pad 0, unk 1, bos 2, eos 3)."""
from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from .files import atomic_write
from .config import BOS_ID, DIALOG_START, EOS_ID, PAD_ID, UNK_ID


class Tokenizer:
    def __init__(self, model_proto: bytes):
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(model_proto)
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (
                PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError("tokenizer special ids differ from the model's (pad 0, unk 1, bos 2, eos 3)")
        self.dialog_start_id = self.sp.piece_to_id(DIALOG_START)
        if self.dialog_start_id == UNK_ID:
            raise ValueError(f"tokenizer lacks the dialog-start symbol {DIALOG_START!r}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, seed_sentencepiece_size: int = 200_000,
              input_sentence_size: int = 2_000_000) -> "Tokenizer":
        """Train a unigram SentencePiece model on already-normalised text.

        The vocabulary is a soft limit so that a tiny corpus still trains (to fewer pieces).
        """
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=(t for t in texts if t.strip()),
            model_writer=buf,
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            model_type="unigram",
            character_coverage=0.9995,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            user_defined_symbols=[DIALOG_START],
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            seed_sentencepiece_size=seed_sentencepiece_size,
            num_threads=2,
            minloglevel=2,
        )
        return cls(buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> None:
        """Write atomically: training skips retraining when the file exists, so a torn one (a kill
        mid-write) would stop every resume."""
        atomic_write(path, self.proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i for i in ids if i > EOS_ID and i != self.dialog_start_id])
