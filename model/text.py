"""Text normalisation shared by training and serving.

`normalize` brings text to the form the model is trained on. The pipeline applies it to corpus text and the
service applies it, with the same style, to request text, so a model never sees a form it was not trained on.
The style is recorded in the served bundle beside the tokenizer.

Styles:
    swda         lower-case, no punctuation except apostrophes and hyphens in ("uh-huh") or at the start of
                 ("-til", a clipped word) a word, as the Switchboard (NeuralDialog-CVAE) text reads.
    dailydialog  ordinary written English: undoes DailyDialog's spaces around punctuation
                 ("Say , Jim" -> "Say, Jim", "I ' m" -> "I'm", "$ 5" -> "$5", " . . ." -> "...").
    chat         informal chat as people type it (the chitchat corpus, and what users send): case, "lol",
                 emoticons and missing punctuation stay; a letter typed three or more times in a row is cut to
                 two ("hiiiii" -> "hii", "soooo" -> "soo", so "good" and "hmm" survive), runs of "!" or "?"
                 to two, runs of dots to "...", and the lone pronoun "i" ("i", "i'm", "i'll") becomes "I".
    plain        only the unicode and white-space cleanup every style starts with.

Every style is idempotent (normalize(normalize(x)) == normalize(x)), never raises, and returns text without
control characters or leading/trailing white space. Idempotence is guaranteed by construction: one pass is
repeated until the text stops changing (in practice one or two passes).
"""

from __future__ import annotations

import re
import unicodedata

STYLES = ("swda", "dailydialog", "chat", "plain")

# Curly and prime quote marks people (and DailyDialog, for ' ) type; mapped so "don’t" and "don't" are one token.
_QUOTE_MAP = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    }
)
# Cc (controls), Cf (format: zero-width, bidi marks, BOM), Cs (lone surrogates); Co/Cn are kept as ordinary text.
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
_MAX_PASSES = 8

# -- dailydialog: the corpus is tokenised with a space on both sides of punctuation --------------------------------
_CONTRACTION = re.compile(r"(?<=\w) ?' ?(s|t|m|re|ll|ve|d)\b(?!')", re.IGNORECASE)
_OCLOCK = re.compile(r"\b([oO]) ?' ?(clock)\b")
_ELLIPSIS = re.compile(r"\.(?: ?\.)+")  # ". . ." and ".." runs -> "..."
_SPACE_BEFORE = re.compile(r" +(?=[,.!?;:%)\]}]|\.\.\.)")
_SPACE_AFTER = re.compile(r"(?<=[(\[{]) +")
_CURRENCY = re.compile(r"(?<=[$£€¥]) +(?=\d)")
# "far.Can" -> "far. Can": a missing space after a sentence end, only between a lower-case word and a capitalised
# word, so abbreviations ("U.S."), decimals and host names ("www.example.com") are left alone.
_GLUED_SENTENCE = re.compile(r"(?<=[a-z]{2}[.?!])(?=[A-Z][a-z])")
_LONE_DQUOTE = re.compile(r'"')
# A single quote inside a word ("don't") is an apostrophe, not a quote mark.
_LONE_SQUOTE = re.compile(r"(?<!\w)'|'(?!\w)")

# -- swda --------------------------------------------------------------------------------------------------------
_SWDA_KEEP = re.compile(r"[^\w\s'-]")
# Hyphens survive inside a word ("uh-huh") and at its start: the published valid/test text marks a clipped word
# that way ("-til", "-kay"). Dashes ("--") and hyphens not followed by a word character are dropped.
_SWDA_STRAY_HYPHEN = re.compile(r"-{2,}|-(?!\w)")


# -- chat -------------------------------------------------------------------------------------------------------
_ELONGATED = re.compile(r"([^\W\d_])\1{2,}")
_BANG_RUN = re.compile(r"([!?])\1{2,}")
_DOT_RUN = re.compile(r"\.{4,}")
_LONE_I = re.compile(r"(?<![\w'])i(?=$|[^\w']|'(?:m|ll|ve|d)\b)")


# Emoticons (":)", ";-P", ":D", "=(") keep the space before them when replies are detokenised.
_EMOTICON = r"[:;=8]-?[)(\]\[DdPpOo/\\|*3](?=\W|$)"
_SPACE_BEFORE_CHAT = re.compile(r" +(?!" + _EMOTICON + r")(?=[,.!?;:%)\]}])")


def _chat(text: str) -> str:
    text = _ELONGATED.sub(r"\1\1", text)
    text = _BANG_RUN.sub(r"\1\1", text)
    text = _DOT_RUN.sub("...", text)
    return _LONE_I.sub("I", text)


def _clean(text: str) -> str:
    """Unicode NFKC, curly quotes to ASCII, control/format characters removed, white space collapsed."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTE_MAP)
    chars = []
    for ch in text:
        if ch.isspace():
            chars.append(" ")
        elif unicodedata.category(ch) not in _DROP_CATEGORIES:
            chars.append(ch)
    return " ".join("".join(chars).split())


def _pair_quotes(text: str, quote: str, pattern: re.Pattern[str]) -> str:
    """Attach quote marks that stand alone between spaces: odd ones open (join the next word), even ones close.

    Quotes already attached to a word are counted (to keep the parity) but left as they are, so written text
    like 'He said "hi" to me' passes through unchanged.
    """
    out: list[str] = []
    pos = 0
    for n, m in enumerate(pattern.finditer(text)):
        i = m.start()
        before_free = i == 0 or text[i - 1] == " "
        after_free = i + 1 == len(text) or text[i + 1] == " "
        out.append(text[pos:i])
        if before_free and after_free:
            if n % 2 == 0:  # opening: drop the space after
                out.append(quote)
                pos = i + 2 if i + 1 < len(text) else i + 1
                continue
            if out[-1].endswith(" "):  # closing: drop the space before
                out[-1] = out[-1][:-1]
        out.append(quote)
        pos = i + 1
    out.append(text[pos:])
    return "".join(out)


def _join_contraction(m: re.Match[str]) -> str:
    # The corpus writes "I ' Ve"; lower-case the suffix only when it was split, so "I'M" typed by a user stays.
    suffix = m.group(1)
    return "'" + (suffix.lower() if " " in m.group(0) else suffix)


def _dailydialog(text: str) -> str:
    text = _CONTRACTION.sub(_join_contraction, text)
    text = _OCLOCK.sub(r"\1'\2", text)
    text = _ELLIPSIS.sub("...", text)
    text = _pair_quotes(text, '"', _LONE_DQUOTE)
    # Single quotes: only when they come in pairs in the utterance; an odd one is likely a plural possessive.
    if len(_LONE_SQUOTE.findall(text)) % 2 == 0:
        text = _pair_quotes(text, "'", _LONE_SQUOTE)
    text = _SPACE_BEFORE.sub("", text)
    text = _SPACE_AFTER.sub("", text)
    text = _CURRENCY.sub("", text)
    text = _GLUED_SENTENCE.sub(" ", text)
    return text.strip()


def _swda(text: str) -> str:
    text = text.lower()
    text = _SWDA_KEEP.sub(" ", text)
    text = text.replace("_", " ")
    text = _SWDA_STRAY_HYPHEN.sub(" ", text)
    return text


def _one_pass(text: str, style: str) -> str:
    text = _clean(text)
    if style == "dailydialog":
        text = _dailydialog(text)
    elif style == "chat":
        text = _chat(text)
    elif style == "swda":
        text = _clean(_swda(text))
    return text


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown text style {style!r}; expected one of {STYLES}")


def normalize(text: str, style: str) -> str:
    """Bring `text` to the form the model is trained on (see the module docstring for the styles)."""
    _check_style(style)
    for _ in range(_MAX_PASSES):
        new = _one_pass(text, style)
        if new == text:
            return new
        text = new
    return text


def detokenize(text: str, style: str) -> str:
    """Readable text from decoded model output.

    SentencePiece output is mostly readable already; this drops spaces before punctuation and inside
    contractions, and capitalises the first letter except for the lower-case `swda` style.
    """
    _check_style(style)
    text = _clean(text.replace("\u2581", " "))
    if style == "swda":
        text = _CONTRACTION.sub(_join_contraction, text)
        return _SPACE_BEFORE.sub("", text).strip()
    if style == "chat":
        text = _SPACE_BEFORE_CHAT.sub("", _CONTRACTION.sub(_join_contraction, text)).strip()
    else:
        text = _dailydialog(text)
    for i, ch in enumerate(text):
        if ch.isalpha():
            # Only the first letter, and only if upper-casing keeps it one character ("ß".upper() is "SS").
            up = ch.upper()
            if len(up) == 1:
                text = text[:i] + up + text[i + 1 :]
            break
        if ch.isalnum():
            break
    return text


def reply_key(text: str, style: str) -> str:
    """What makes two replies the same for deduplication: normalised, case-folded, white space collapsed
    ("" for an empty reply)."""
    return " ".join(normalize(text, style).casefold().split())


_WORD = re.compile(r"\S+")


def settled_prefix(text: str, style: str) -> str:
    """The part of ``text``, what :func:`detokenize` gives for a reply still being decoded, that the rest of
    the reply cannot change, so that streaming may send it: all but the last two words (the last may still
    grow; punctuation or a contraction joins the next to the one before), without the white space after it;
    in the styles whose detokenising pairs quotes (all but ``chat`` and ``swda``) nothing from the first quote
    mark on, since a later quote changes the spaces around an earlier one. The whole reply's text starts with
    it (tests/model/test_text.py)."""
    _check_style(style)
    words = list(_WORD.finditer(text))
    if len(words) < 3:
        return ""
    end = words[-3].end()
    if style not in ("chat", "swda"):  # detokenize pairs quotes (model.text._dailydialog)
        quotes = [i for i in (text.find("'"), text.find('"')) if i >= 0]
        if quotes:
            end = min(end, min(quotes))
    return text[:end].rstrip()
