"""The decoding lexicon and its piece constraint (model.lexicon), and lexicon-constrained decoding."""
import random

import pytest
import torch

from model.config import EOS_ID, PAD_ID, UNK_ID, BOS_ID, preset
from model.cvae import CVAE
from model.decoding import decode
from model.lexicon import Lexicon, PieceConstraint, _Piece, words
from model.tokenizer import Tokenizer
from harness.words import WORDS

VOCAB = [*WORDS, "don't", "it's", "I'm"]


def corpus(k=400, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        s = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(2, 8)))
        out.append(s.capitalize() + rng.choice([".", "?", "!", "", " :)"]))
    # typos seen once or twice: below min_count they stay out of the lexicon
    return out + ["helo wrld", "goood mornin", "helo"]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(corpus(), vocab_size=120)


def test_words_and_lexicon_counts():
    assert words("Don't stop, I'm 5pm :D") == ["don't", "stop", "i'm", "5pm", "d"]
    lex = Lexicon.build(corpus(), min_count=3)
    assert "hello" in lex and "don't" in lex and "it's" in lex
    assert "helo" not in lex and "wrld" not in lex  # seen under 3 times
    assert "42" in lex and "3rd" in lex  # numbers are always allowed
    assert lex.is_prefix("hel") and not lex.is_prefix("hx")


def test_lexicon_save_load_round_trip(tmp_path):
    lex = Lexicon.build(corpus(), min_count=3)
    lex.save(tmp_path / "lexicon.txt")
    back = Lexicon.load(tmp_path / "lexicon.txt")
    assert back.words == lex.words and back.min_count == 3


@pytest.mark.parametrize("text, opens, lead, closes, inner, tail", [
    ("\u2581hello", True, "", True, (), "hello"),
    ("ing", False, "ing", False, (), ""),
    ("s.", False, "s", True, (), ""),
    (",", True, "", True, (), ""),
    ("\u2581", True, "", True, (), ""),
    ("'s", False, "'s", False, (), ""),
    ("o,\u2581ab", False, "o", True, (), "ab"),
    ("\u2581a.b.c", True, "", True, ("a", "b"), "c"),
])
def test_piece_parsing(text, opens, lead, closes, inner, tail):
    p = _Piece(text)
    assert (p.opens, p.lead, p.closes_lead, p.inner, p.tail) == (opens, lead, closes, inner, tail)


def test_constraint_accepts_every_sentence_of_lexicon_words(tokenizer):
    lex = Lexicon.build(corpus(), min_count=3)
    pc = PieceConstraint(lex, tokenizer.sp)
    for s in corpus()[:300]:
        ids = tokenizer.encode(s)
        if UNK_ID in ids:
            continue
        state = pc.start()
        for i in ids:
            assert pc.allowed(state)[i], (s, tokenizer.sp.id_to_piece(i), state)
            state = pc.advance(state, i)
        assert pc.allowed(state)[EOS_ID], s


def test_constraint_blocks_non_words_and_early_end(tokenizer):
    lex = Lexicon.build(corpus(), min_count=3)
    pc = PieceConstraint(lex, tokenizer.sp)
    # a piece that starts a word without completing one ("\u2581mor" of "morning", say)
    pid, part = next((i, p[1:].lower()) for i in range(tokenizer.vocab_size)
                     if (p := tokenizer.sp.id_to_piece(i)).startswith("\u2581") and len(p) > 1
                     and p[1:].isalpha() and p[1:].lower() not in lex and lex.is_prefix(p[1:].lower()))
    state = pc.advance(pc.start(), pid)
    assert state == part
    assert not pc.allowed(state)[EOS_ID]  # not a word yet: the reply cannot end here
    assert not pc.allowed(state)[pid]  # nor can a new word start
    for special in (PAD_ID, UNK_ID, BOS_ID):
        assert not pc.allowed("")[special]


def test_thousands_of_random_replies_hold_only_lexicon_words(tokenizer):
    """Random weights and random latent codes, sampled at a high temperature: every word decoded with the
    constraint is in the decoding lexicon; without it, non-words appear."""
    lex = Lexicon.build(corpus(), min_count=3)
    banned = (PAD_ID, UNK_ID, BOS_ID, tokenizer.dialog_start_id)
    pc = PieceConstraint(lex, tokenizer.sp, banned)
    torch.manual_seed(0)
    model = CVAE(preset("tiny", vocab_size=tokenizer.vocab_size, max_decode_len=12)).eval()
    B = 500
    bad_free = 0
    for _ in range(4):  # 2,000 replies
        cond = torch.randn(B, model.cfg.cond_dim) * 3
        z = torch.randn(B, model.cfg.latent_dim) * 3
        out = decode(model, cond, z, 12, strategy="sample", temperature=2.0, banned=banned, constraint=pc)
        for toks, fin in zip(out.tokens, out.finish_reason):
            text = tokenizer.decode(toks)
            ws = words(text)
            if fin == "eos":
                assert all(w in lex for w in ws), text
            else:  # cut by the length limit: every word but the unfinished last one is complete
                assert all(w in lex for w in ws[:-1]), text
                assert not ws or lex.is_prefix(ws[-1]), text
        free = decode(model, cond, z, 12, strategy="sample", temperature=2.0, banned=banned)
        bad_free += sum(any(w not in lex for w in words(tokenizer.decode(t))) for t in free.tokens)
    assert bad_free > 100  # the test would catch a constraint that does nothing


def test_numbers_take_digits_and_one_known_suffix_only():
    """A word holding a digit was always allowed, so any letters could follow one ("500ealandealand" came out
    at a high latent temperature); now a number is digits and at most one known suffix, and other words with
    digits must be in the lexicon."""
    from model.lexicon import Lexicon

    lex = Lexicon(["hello", "mp3"])
    for w in ("5", "1990", "5pm", "2nd", "1990s", "90's", "10k", "mp3"):
        assert w in lex, w
    for w in ("500ealand", "12ab", "1st2", "3x4", "ps4"):
        assert w not in lex, w
    assert lex.is_prefix("50") and lex.is_prefix("5p") and lex.is_prefix("2n") and lex.is_prefix("mp")
    assert not lex.is_prefix("50e") and not lex.is_prefix("12ab")
