"""Decoding that never invents words: a lexicon of the training corpora and a constraint on the pieces.

A *word* is a maximal run of letters, digits and apostrophes ("don't", "lol", "5pm"); everything else (spaces,
punctuation, emoticon marks) separates words. The lexicon holds the lower-cased words seen at least K times in
the training text (so one-off typos drop out). A number is always allowed: digits, then at most one of a few
suffixes ("5pm", "2nd", "1990s", "90's", "10k"); any other word holding a digit ("mp3") only when the lexicon
has it. (Any letters after a digit were allowed before, and one reply at a high latent temperature read
"500ealandealandealand".)

The constraint tracks, per decoded row, the word being written (its letters so far). A SentencePiece piece
may close it (a piece starting with the word-boundary mark or a separator), continue it, or close it and
start others inside the piece. A piece is allowed when every word it closes is in the lexicon and the word it
leaves open is a prefix of some lexicon word; end-of-reply is allowed when the open word is complete. Masks
are cached per open word (most rows sit on a few hundred states), so a step costs a lookup and a stack.

    lex = Lexicon.build(texts, min_count=3)
    constraint = PieceConstraint(lex, tokenizer.sp)      # one per bundle
    state = constraint.start()                           # per row
    mask = constraint.allowed(state)                     # (V,) bool
    state = constraint.advance(state, piece_id)
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import torch

from .config import BOS_ID, EOS_ID, PAD_ID, UNK_ID

BOUNDARY = "\u2581"  # SentencePiece's word-boundary mark
# What may follow the digits of a number: ordinals, plurals, times, magnitudes and units.
NUMBER_SUFFIXES = ("s", "'s", "st", "nd", "rd", "th", "am", "pm", "k", "m", "b", "x", "ish", "h", "hr", "hrs",
                   "min", "mins", "yr", "yrs", "ft", "lb", "lbs", "kg", "km", "mph", "cm", "mm", "d")
_NUMBER = re.compile(r"(\d+)(.*)")
_SUFFIX_PREFIXES = frozenset(x[:i] for x in NUMBER_SUFFIXES for i in range(len(x) + 1))
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)
FILE = "lexicon.txt"


def is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "'"


def words(text: str) -> list[str]:
    """The lower-cased words of a text (see the module docstring)."""
    return [w.lower() for w in _WORD.findall(text)]


class Lexicon:
    """A set of lower-cased words and the set of their prefixes."""

    def __init__(self, vocabulary: Iterable[str], min_count: int = 1):
        self.words = frozenset(w.lower() for w in vocabulary if w)
        self.min_count = min_count
        self.prefixes = frozenset(w[:i] for w in self.words for i in range(1, len(w) + 1))

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 3) -> "Lexicon":
        counts = Counter(w for t in texts for w in words(t))
        return cls((w for w, c in counts.items() if c >= min_count), min_count)

    def __contains__(self, word: str) -> bool:
        if word in self.words:
            return True
        m = _NUMBER.fullmatch(word)
        return m is not None and (m.group(2) == "" or m.group(2) in NUMBER_SUFFIXES)

    def __len__(self) -> int:
        return len(self.words)

    def is_prefix(self, part: str) -> bool:
        if part in self.prefixes:
            return True
        m = _NUMBER.fullmatch(part)  # digits so far, or digits and the start of a suffix
        return m is not None and m.group(2) in _SUFFIX_PREFIXES

    def save(self, path: str | Path) -> None:
        from .files import atomic_write

        atomic_write(path, f"# min_count {self.min_count}\n" + "".join(w + "\n" for w in sorted(self.words)))

    @classmethod
    def load(cls, path: str | Path) -> "Lexicon":
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        min_count = 1
        if lines and lines[0].startswith("# min_count "):
            min_count = int(lines.pop(0).split()[-1])
        return cls((w.strip() for w in lines if w.strip()), min_count)


class _Piece:
    """What a piece does to the open word: ``opens``: the piece starts at a word boundary (or with a
    separator), so the open word must be complete before it; ``lead``: the letters before its first separator,
    which continue the open word; ``closes_lead``: a separator follows them inside the piece, so the open word
    plus ``lead`` must be a complete word; ``inner``: the whole words between its separators; ``tail``: the word
    it leaves open."""

    __slots__ = ("opens", "lead", "closes_lead", "inner", "tail")

    def __init__(self, text: str):
        self.opens = text.startswith(BOUNDARY) or (bool(text) and not is_word_char(text[0]))
        body = text.lstrip(BOUNDARY) if text.startswith(BOUNDARY) else text
        runs: list[str] = []
        cur, seps = "", 0
        lead_closed = False
        for ch in body:
            if is_word_char(ch):
                cur += ch.lower()
            else:
                if not runs and not self.opens and seps == 0:
                    lead_closed = True
                runs.append(cur)
                cur = ""
                seps += 1
        runs.append(cur)
        if self.opens:
            self.lead, self.closes_lead = "", True
            self.inner = tuple(r for r in runs[:-1] if r)
        else:
            self.lead, self.closes_lead = runs[0], lead_closed
            self.inner = tuple(r for r in runs[1:-1] if r)
        self.tail = runs[-1] if (self.opens or len(runs) > 1) else ""


class PieceConstraint:
    """Masks of the pieces allowed after each open word (see the module docstring)."""

    def __init__(self, lexicon: Lexicon, sp: object, banned: Sequence[int] = (PAD_ID, UNK_ID, BOS_ID),
                 cache_size: int = 4096):
        self.lexicon = lexicon
        n = sp.get_piece_size()  # type: ignore[attr-defined]
        self.pieces = [_Piece(sp.id_to_piece(i)) for i in range(n)]  # type: ignore[attr-defined]
        special = {i for i in range(n)
                   if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)}  # type: ignore[attr-defined]
        self.vocab_size = n
        lex = lexicon
        # Pieces whose inner words are complete and whose open tail is a prefix: valid after a complete word.
        static = torch.zeros(n, dtype=torch.bool)
        self.continuing: list[tuple[int, str, bool]] = []
        for i, p in enumerate(self.pieces):
            inner_ok = all(w in lex for w in p.inner) and (not p.tail or lex.is_prefix(p.tail))
            if not inner_ok or i in banned or i in special:
                continue
            if p.opens:
                static[i] = True
            elif p.lead or not p.closes_lead:
                self.continuing.append((i, p.lead, p.closes_lead))
        for i in banned:
            static[i] = False
        static[EOS_ID] = False
        self._opening = static
        self._cont_ids = torch.tensor([i for i, _, _ in self.continuing], dtype=torch.long)
        self.allowed = lru_cache(maxsize=cache_size)(self._allowed)  # type: ignore[method-assign]

    def start(self) -> str:
        return ""

    def _allowed(self, open_word: str) -> torch.Tensor:
        """(V,) bool: the pieces allowed when ``open_word`` is being written ("" at a boundary)."""
        lex = self.lexicon
        complete = open_word == "" or open_word in lex
        mask = self._opening.clone() if complete else torch.zeros(self.vocab_size, dtype=torch.bool)
        mask[EOS_ID] = complete
        keep = []
        for j, (_, lead, closes) in enumerate(self.continuing):
            word = open_word + lead
            if (word in lex) if closes else (word == "" or lex.is_prefix(word)):
                keep.append(j)
        if keep:
            mask[self._cont_ids[keep]] = True
        return mask

    def advance(self, open_word: str, piece_id: int) -> str:
        p = self.pieces[piece_id]
        if p.opens or p.closes_lead:
            return p.tail
        return open_word + p.lead

    def masks(self, states: Sequence[str]) -> torch.Tensor:
        """(len(states), V) bool."""
        return torch.stack([self.allowed(s) for s in states])
