import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.text import STYLES, detokenize, normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Say , Jim , how about a few beers after dinner ?", "Say, Jim, how about a few beers after dinner?"),
        ("I ' m fine , don ' t worry .", "I'm fine, don't worry."),
        ("I ’ m sure it ’ s fine", "I'm sure it's fine"),
        ("I ' Ve got 30 cousins", "I've got 30 cousins"),
        ("at six o ' clock", "at six o'clock"),
        ("( ok )", "(ok)"),
        ('She never even says " hello " to me .', 'She never even says "hello" to me.'),
        ('what is called a " tornado watch . " Then', 'what is called a "tornado watch." Then'),
        ("was first named ' New College ' , with", "was first named 'New College', with"),
        ("It costs $ 5 .", "It costs $5."),
        ("Mmmm . . . if I come", "Mmmm... if I come"),
        ("Well , that's too far.Can you change it ?", "Well, that's too far. Can you change it?"),
        ("It went up 50 % ; wow !", "It went up 50%; wow!"),
        ("  Hello\t\x00there\u200b !\n", "Hello there!"),
    ],
)
def test_normalize_dailydialog_undoes_corpus_tokenisation(raw, expected):
    assert normalize(raw, "dailydialog") == expected


@pytest.mark.parametrize(
    "written",
    [
        'He said "hi" to me. It\'s 5 o\'clock, e.g. in the U.S. for $5 (maybe)...',
        "Visit www.example.com at 2:30 pm; it's 3.5 km away!",
        "The boys' toys - all of them - are 'fine'.",
        "Don't you think so? I'm not sure.",
    ],
)
def test_normalize_dailydialog_leaves_written_text_alone(written):
    assert normalize(written, "dailydialog") == written


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("i don't really have a favorite type", "i don't really have a favorite type"),
        ("Uh-huh, I DON'T know -- really?", "uh-huh i don't know really"),
        ("-til around one thirty", "-til around one thirty"),  # a clipped word, as the corpus writes it
        ("well - okay; a&m (20/20)", "well okay a m 20 20"),
        ("It’s  fine\u00a0", "it's fine"),
    ],
)
def test_normalize_swda(raw, expected):
    assert normalize(raw, "swda") == expected


def test_normalize_plain_only_cleans_unicode_and_space():
    assert normalize("  Ｈｅｌｌｏ ,\u00a0wor\x07ld\r\n ! ", "plain") == "Hello , world !"


def test_unknown_style_is_rejected():
    with pytest.raises(ValueError, match="unknown text style"):
        normalize("hi", "shouty")
    with pytest.raises(ValueError, match="unknown text style"):
        detokenize("hi", "shouty")


@pytest.mark.parametrize(
    ("decoded", "style", "expected"),
    [
        ("hello , how are you ? i ' m fine .", "plain", "Hello, how are you? i'm fine."),
        ("▁sure ▁thing !", "dailydialog", "Sure thing!"),
        ("uh-huh i don ' t know", "swda", "uh-huh i don't know"),
        ("", "plain", ""),
        ("ßtraße", "plain", "ßtraße"),  # "ß".upper() is two letters: left alone
    ],
)
def test_detokenize(decoded, style, expected):
    assert detokenize(decoded, style) == expected


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in text)


# Text made of the characters that matter here (corpus punctuation, quotes, space and controls) mixed with
# arbitrary unicode, so hypothesis hits the punctuation rules often.
_PIECES = st.sampled_from(
    list(" ,.!?;:'\"()$%-’“”\t\n\r\x00\x1f\u200b\u2028\u00a0\u0301")
    + ["I", "m", "s", "t", "o", "clock", "ab", "Cd"]
)
_TEXT = st.one_of(st.text(), st.lists(st.one_of(_PIECES, st.text(max_size=3))).map("".join))


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, style=st.sampled_from(STYLES))
def test_normalize_properties(text, style):
    out = normalize(text, style)
    assert normalize(out, style) == out
    assert not _has_control(out)
    assert out == out.strip()
    assert "  " not in out


@settings(max_examples=200, deadline=None)
@given(text=_TEXT, style=st.sampled_from(STYLES))
def test_detokenize_properties(text, style):
    out = detokenize(text, style)
    assert not _has_control(out)
    assert out == out.strip()


@pytest.mark.parametrize("blank", ["", " ", "\t\n", "\u2028\u00a0\u3000", "\x00\x1b"])
@pytest.mark.parametrize("style", STYLES)
def test_blank_text_normalises_to_empty(blank, style):
    assert normalize(blank, style) == ""


# -- chat: informal input as people type it -------------------------------------------------------------------


@pytest.mark.parametrize("raw, norm", [
    ("hiiiii how r u??????", "hii how r u??"),
    ("i dont know lol, i'm soooo tired.....", "I dont know lol, I'm soo tired..."),
    ("Good cool hmm :)", "Good cool hmm :)"),
    ("i'd say ill go, iPhone is fine", "I'd say ill go, iPhone is fine"),
])
def test_chat_style(raw, norm):
    assert normalize(raw, "chat") == norm
    assert normalize(norm, "chat") == norm


def test_chat_detokenize_keeps_emoticons_and_joins_punctuation():
    assert detokenize("ok :D see you ;)", "chat") == "Ok :D see you ;)"
    assert detokenize("really ? haha , I ' m in", "chat") == "Really? haha, I'm in"


# ----- streaming: the settled prefix of a reply being decoded --------------------------------------------

def _shipped_tokenizer():
    from model.bundle import DEFAULT_BUNDLE
    from model.tokenizer import Tokenizer

    return Tokenizer.load(DEFAULT_BUNDLE / "tokenizer.model")


_TOK = _shipped_tokenizer()
# Pieces that stress the rules: punctuation, contractions, quotes, emoticons, elongations, plain words.
_TRICKY = [_TOK.encode(s) for s in ("'", '"', "n't", "'s", "'m", ",", ".", "...", "!!!", "?", ":)", ":-(", "i",
                                    "sooooo", "o'clock", "(", ")", "$", "5", "U.S.", "ok", "well", "the")]
_PIECES = st.one_of(st.integers(4, _TOK.vocab_size - 1).map(lambda i: [i]), st.sampled_from(_TRICKY))


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=30), st.sampled_from(STYLES))
def test_settled_prefix_never_changes_as_the_reply_grows(parts, style):
    from model.text import settled_prefix

    ids = [i for p in parts for i in p]
    final = detokenize(_TOK.decode(ids), style)
    sent = ""
    for t in range(1, len(ids) + 1):
        now = settled_prefix(detokenize(_TOK.decode(ids[:t]), style), style)
        if len(now) > len(sent):  # what streaming sends: only ever more, never a change of what it sent
            assert now.startswith(sent), (ids[:t], sent, now)
            sent = now
        assert final.startswith(sent), (ids, sent, final)


def test_settled_prefix_holds_back_the_last_two_words_and_paired_quotes():
    from model.text import settled_prefix

    assert settled_prefix("I do", "chat") == ""
    assert settled_prefix("I do not know", "chat") == "I do"
    assert settled_prefix("Hello there, how are", "chat") == "Hello there,"
    assert settled_prefix("He said 'go away now please", "dailydialog") == "He said"
    assert settled_prefix("He said 'go away now please", "chat") == "He said 'go away"
    with pytest.raises(ValueError):
        settled_prefix("a b c d", "klingon")
