"""The small vocabulary of the synthetic dialogs that the tests and the reliability tools make (tiny tokenizers,
corpora, load-test requests): one list, so that they all speak the same toy language."""
from __future__ import annotations

import random

WORDS: tuple[str, ...] = tuple(
    "hello hi how are you fine thanks good morning what is your name my name is anna bob do like tea "
    "coffee yes no maybe sure where going home work today tomorrow see later".split())


def sentence(rng: random.Random, shortest: int, longest: int) -> str:
    """shortest to longest words of WORDS (each length equally likely), space-separated."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(shortest, longest)))
