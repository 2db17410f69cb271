"""A small Okapi BM25 retriever over whitespace tokens (lower-cased, punctuation-only tokens dropped).

Used by the embedded benchmark to rank each question's candidate passages, so its top-5 is a natural mix of
gold passages and hard distractors, the way a real lexical retriever would mix them.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence


def tokenize(text: str) -> list[str]:
    return [t for t in text.lower().split() if any(c.isalnum() for c in t)]


class BM25:
    def __init__(self, corpus: Sequence[str], k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.docs = [Counter(tokenize(d)) for d in corpus]
        self.lengths = [sum(c.values()) for c in self.docs]
        self.avg_len = (sum(self.lengths) / len(self.lengths)) if self.docs else 0.0
        df: Counter = Counter()
        for c in self.docs:
            df.update(c.keys())
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def idf_of(self, term: str) -> float:
        return self.idf.get(term, math.log(1 + (len(self.docs) + 0.5) / 0.5))

    def score(self, query: str, text: str) -> float:
        """BM25 score of an arbitrary passage under this corpus's statistics."""
        counts = Counter(tokenize(text))
        length = sum(counts.values())
        s = 0.0
        for term in tokenize(query):
            tf = counts.get(term, 0)
            if tf:
                norm = tf + self.k1 * (1 - self.b + self.b * length / max(self.avg_len, 1e-9))
                s += self.idf_of(term) * tf * (self.k1 + 1) / norm
        return s

    def rank(self, query: str, passages: Sequence[str]) -> list[tuple[int, float]]:
        """(index, score) of ``passages`` sorted best first (ties keep input order)."""
        scored = [(i, self.score(query, p)) for i, p in enumerate(passages)]
        return sorted(scored, key=lambda x: -x[1])
