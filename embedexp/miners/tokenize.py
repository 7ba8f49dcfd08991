"""Lexical tokenisation for BM25: token pattern, lower-casing, stop words, optional stemming.

`Tokenizer(pattern="whitespace", lowercase=False, stopwords=None)` is exactly the field guide's
`text.split()`; the miner's default (`\\w+`, lower-cased, English stop words) is the usual choice.
"""

from __future__ import annotations

import re
from array import array
from collections import defaultdict
from typing import Callable

import numpy as np

from embedexp.errors import ConfigError

PATTERNS = ("word", "whitespace")
STOPWORD_LISTS = ("none", "english")
STEMMERS = ("porter", "snowball")

# A small built-in English list (articles, pronouns, auxiliaries, prepositions, conjunctions).
ENGLISH_STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves
    """.split()
)

_WORD = re.compile(r"\w+")


def _load_stemmer(name: str) -> Callable[[str], str]:
    """PyStemmer when installed (fast), else NLTK; a one-line ConfigError when neither is."""
    try:
        import Stemmer  # PyStemmer

        algo = "porter" if name == "porter" else "english"
        return Stemmer.Stemmer(algo).stemWord
    except ImportError:
        pass
    try:
        from nltk.stem import PorterStemmer, SnowballStemmer

        return (PorterStemmer() if name == "porter" else SnowballStemmer("english")).stem
    except ImportError:
        raise ConfigError(
            f"miner.stemmer={name!r} needs a stemmer package; install PyStemmer or nltk, or set miner.stemmer=null"
        ) from None


class Tokenizer:
    """text -> list of tokens. Stop words are matched case-insensitively, before stemming."""

    def __init__(
        self,
        pattern: str = "word",
        lowercase: bool = True,
        stopwords: str | None = "english",
        stemmer: str | None = None,
        key: str = "miner",
    ) -> None:
        if pattern not in PATTERNS:
            raise ConfigError(f"{key}.token_pattern={pattern!r}; expected one of {', '.join(PATTERNS)}")
        if not isinstance(lowercase, bool):
            raise ConfigError(f"{key}.lowercase={lowercase!r}; expected true or false")
        if stopwords in (None, False):
            stopwords = "none"
        if stopwords not in STOPWORD_LISTS:
            raise ConfigError(f"{key}.stopwords={stopwords!r}; expected one of {', '.join(STOPWORD_LISTS)} (or null)")
        if stemmer is not None and stemmer not in STEMMERS:
            raise ConfigError(f"{key}.stemmer={stemmer!r}; expected null or one of {', '.join(STEMMERS)}")
        self.pattern = pattern
        self.lowercase = lowercase
        self.stopwords = stopwords
        self.stemmer = stemmer
        self._stop = ENGLISH_STOPWORDS if stopwords == "english" else frozenset()
        self._stem = _load_stemmer(stemmer) if stemmer else None
        self._stem_cache: dict[str, str] = {}

    def settings(self) -> dict:
        return {
            "token_pattern": self.pattern,
            "lowercase": self.lowercase,
            "stopwords": self.stopwords,
            "stemmer": self.stemmer,
        }

    def __call__(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        tokens = _WORD.findall(text) if self.pattern == "word" else text.split()
        if self._stop:
            stop = self._stop
            if self.lowercase:
                tokens = [t for t in tokens if t not in stop]
            else:
                tokens = [t for t in tokens if t.lower() not in stop]
        if self._stem is not None:
            cache, stem = self._stem_cache, self._stem
            out = []
            for t in tokens:
                s = cache.get(t)
                if s is None:
                    s = cache[t] = stem(t)
                out.append(s)
            tokens = out
        return tokens

    def many(self, texts: list[str]) -> list[list[str]]:
        if self.pattern == "whitespace" and not self.lowercase and not self._stop and self._stem is None:
            return list(map(str.split, texts))  # the plain `text.split()`, without a Python call per text
        return [self(t) for t in texts]

    def ids(self, texts, vocab: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """Tokenise `texts` straight to int32 term ids: no per-token Python string is kept.

        Args:
            texts: an iterable of texts (tokenised one at a time; only one text's tokens exist at once).
            vocab: token -> id to start from (copied; new tokens get the next ids); empty by default.
        Returns:
            (ids, lengths, vocab): ids (sum(lengths),) int32, every text's term ids concatenated in text order;
            lengths (n_texts,) int64 tokens per text; vocab token -> id, ids in order of first appearance.
        """
        table: defaultdict[str, int] = defaultdict(None, vocab or {})
        table.default_factory = table.__len__  # a new token gets the next id
        get = table.__getitem__
        out = array("i")
        lengths = array("q")
        plain = self.pattern == "whitespace" and not self.lowercase and not self._stop and self._stem is None
        for text in texts:
            tokens = text.split() if plain else self(text)
            lengths.append(len(tokens))
            out.extend(map(get, tokens))
        table.default_factory = None
        if len(table) > np.iinfo(np.int32).max:  # pragma: no cover - 2^31 distinct tokens
            raise ValueError("more than 2^31 distinct tokens")
        return np.frombuffer(out, dtype=np.int32), np.frombuffer(lengths, dtype=np.int64), table
