"""Answer metrics of docs/DESIGN.md §2: Match, exact match (EM) and token-level F1, plus a seeded bootstrap interval.

All three compare *normalized* strings: lowercase, punctuation removed, the articles ``a`` / ``an`` / ``the``
removed, whitespace collapsed (the SQuAD normalization). With several gold answers each metric takes the best
one. ``Match`` is the robust-RAG "accuracy": the normalized gold answer occurs as a substring of the normalized
model output, so a correct answer inside a longer sentence still counts.

    >>> match("The answer is Paris.", ["paris", "Paris, France"])
    1.0
    >>> f1("new york city", ["New York"])
    0.8
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import numpy as np

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(answers: Sequence[str] | str) -> list[str]:
    """Normalized gold answers, empty ones dropped (an empty gold would match every output)."""
    if isinstance(answers, str):
        answers = [answers]
    return [g for g in (normalize(a) for a in answers) if g]


def match(prediction: str, answers: Sequence[str] | str) -> float:
    """1.0 when some normalized gold answer is a substring of the normalized prediction, else 0.0."""
    pred = normalize(prediction)
    return float(any(g in pred for g in _golds(answers)))


def exact_match(prediction: str, answers: Sequence[str] | str) -> float:
    """1.0 when the normalized prediction equals some normalized gold answer."""
    pred = normalize(prediction)
    return float(any(g == pred for g in _golds(answers)))


def _f1_one(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, answers: Sequence[str] | str) -> float:
    """Token-level F1 between normalized prediction and gold (bag of words), best over the gold answers."""
    pred_tokens = normalize(prediction).split()
    return max((_f1_one(pred_tokens, g.split()) for g in _golds(answers)), default=0.0)


def score(prediction: str, answers: Sequence[str] | str) -> dict[str, float]:
    """All three metrics of one prediction: ``{"match", "em", "f1"}``."""
    return {"match": match(prediction, answers), "em": exact_match(prediction, answers), "f1": f1(prediction, answers)}


def mean(values: Sequence[float]) -> float:
    """Plain mean (0.0 for no values), summed in the given order so every caller gets the same float."""
    return float(sum(values) / len(values)) if len(values) else 0.0


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> list[float]:
    """Percentile bootstrap interval ``[lo, hi]`` of the mean of ``values`` (seeded, so reruns agree).

    ``n_resamples <= 0`` or fewer than two values give the degenerate interval ``[mean, mean]``.
    """
    arr = np.asarray(values, dtype=np.float64)
    m = mean(list(arr))
    if n_resamples <= 0 or arr.size < 2:
        return [m, m]
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, 256):  # chunks bound the memory for large test sets
        stop = min(n_resamples, start + 256)
        idx = rng.integers(0, arr.size, size=(stop - start, arr.size))
        means[start:stop] = arr[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def summarize(rows: Sequence[dict], n_resamples: int = 1000, seed: int = 0) -> dict:
    """Aggregate per-question scores (dicts with match / em / f1) into
    ``{"match", "em", "f1", "match_ci95": [lo, hi], "n"}``."""
    matches = [r["match"] for r in rows]
    return {
        "match": mean(matches),
        "em": mean([r["em"] for r in rows]),
        "f1": mean([r["f1"] for r in rows]),
        "match_ci95": bootstrap_ci(matches, n_resamples, seed),
        "n": len(rows),
    }
