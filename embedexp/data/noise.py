"""Input noise for denoising objectives (TSDAE).

``delete_words`` is the deletion noise of TSDAE (Wang, Reimers, Gurevych 2021, arXiv:2104.06979):
every word is deleted independently with probability ``ratio`` (0.6 in the paper), and at least one
word always survives. Words are whitespace-separated tokens (sentence-transformers uses NLTK's word
tokenizer instead; whitespace splitting needs no extra dependency and keeps punctuation attached to
its word). The damaged text is the kept words joined by single spaces.
"""

from __future__ import annotations

import random


def check_ratio(ratio: float, key: str = "ratio") -> float:
    """Return ``ratio`` as a float if it is a number in [0, 1); raise ValueError naming ``key`` otherwise."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0.0 <= float(ratio) < 1.0):
        raise ValueError(f"{key}={ratio!r}; expected a number in [0, 1) (the fraction of words deleted, 0.6 in TSDAE)")
    return float(ratio)


def delete_words(text: str, ratio: float = 0.6, rng: random.Random | None = None) -> str:
    """Delete each whitespace-separated word of ``text`` with probability ``ratio``; keep at least one.

    Args:
        text: the original sentence.
        ratio: deletion probability per word, in [0, 1). 0 returns the words unchanged.
        rng: source of randomness; a seeded ``random.Random`` makes the result deterministic.
            None uses the global ``random`` module (seeded by ``random.seed``).

    Returns:
        The kept words joined by single spaces. A text without words is returned unchanged.
    """
    ratio = check_ratio(ratio)
    if rng is None:
        rng = random._inst  # the global generator behind random.random(), seeded by random.seed()
    words = text.split()
    if not words:
        return text
    kept = [w for w in words if rng.random() >= ratio]  # P(keep) = 1 - ratio
    if not kept:
        kept = [words[rng.randrange(len(words))]]
    return " ".join(kept)
