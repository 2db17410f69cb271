"""The primary comparisons of a run, fixed in the config before any test number is seen (``analysis.primary``,
``analysis.primary_cells``, ``analysis.alpha``), tested as one family with Holm's correction (``rag/analysis.py``
writes them first; every other number it writes is exploratory).

Each comparison ``A:B`` in each cell ``kind/setting`` is the mean of ``match_A - match_B`` over the questions of
that kind (``all``: every question) both methods answered in that setting, with the paired bootstrap 95% interval
of ``neurorit/metrics.py`` (seed 0) and the p-value of an **exact two-sided paired sign-flip permutation test**: under "no difference" each
question's difference is as likely to have either sign, so over the ``m`` questions where the two answers' match
differs (match is 0 or 1, so each such difference is +1 or -1; ties carry no sign) the count of +1 is
Binomial(m, 1/2), and p is the probability of a count at least as far from m/2 as the one observed (McNemar's
exact test). Every flip is counted, no sampling: the p-value needs no seed and reruns agree to the bit.

Holm's step-down procedure then adjusts the family's p-values: sorted ascending, the i-th smallest (from 1) is
multiplied by ``family size - i + 1``, the running maximum taken and capped at 1; a comparison whose adjusted p is
at most ``alpha`` is a difference ("A better" or "B better" by the sign of the difference), any other "no
difference". A comparison with no question in its cell (an arm not evaluated, a kind absent) is reported
"missing"; it stays in the family with p = 1, so the registered family's size, not what happened to run, sets the
correction.
"""
from __future__ import annotations

from math import comb

from neurorit.errors import UserError
from neurorit.metrics import bootstrap_ci, mean

MISSING = "missing"
ALL_KINDS = "all"  # the kind of a cell over every question


def paired_diffs(a: dict, b: dict, setting: str, kind: str = "") -> list[float]:
    """``match_a - match_b`` over the questions both answered in ``setting`` (of ``meta.kind`` ``kind`` when
    given), in question order; ``a`` and ``b`` are ``{(setting, question id): prediction row}``."""
    keys = sorted(k for k in a if k[0] == setting and k in b and (not kind or a[k].get("kind") == kind))
    return [a[k]["match"] - b[k]["match"] for k in keys]


def sign_flip_p(diffs: list[float]) -> float:
    """Exact two-sided p-value of the paired sign-flip permutation test of 0/1 match differences (see the module
    docstring); 1.0 when no difference is non-zero."""
    if any(d not in (-1, 0, 1) for d in diffs):
        raise UserError("the sign-flip test reads 0/1 match differences; got other values")
    m = sum(1 for d in diffs if d)
    far = abs(2 * sum(1 for d in diffs if d > 0) - m)
    extreme = sum(comb(m, x) for x in range(m + 1) if abs(2 * x - m) >= far)
    return min(1.0, extreme / 2 ** m)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def comparison(preds: dict, pair: str, cell: str, n_resamples: int = 1000) -> dict:
    """One primary comparison ``A:B`` in one cell ``kind/setting``, before the correction: n, the difference, its
    interval and its p-value, or ``missing`` with the reason."""
    a, b = pair.split(":")
    kind, setting = cell.split("/", 1)
    out = {"a": a, "b": b, "kind": kind, "setting": setting}
    absent = [name for name in (a, b) if name not in preds]
    diffs = [] if absent else paired_diffs(preds[a], preds[b], setting, "" if kind == ALL_KINDS else kind)
    if not diffs:
        reason = f"no predictions of {', '.join(absent)}" if absent else f"no {kind} question in {setting} of both"
        return {**out, "n": 0, "diff": None, "ci95": None, "p": None, "p_holm": None, "verdict": MISSING,
                "missing": reason}
    return {**out, "n": len(diffs), "diff": mean(diffs), "ci95": bootstrap_ci(diffs, n_resamples),
            "p": sign_flip_p(diffs)}


def primary_family(preds: dict, pairs: list[str], cells: list[str], alpha: float) -> dict:
    """Every pair in every cell, with Holm-adjusted p-values (``p_holm``) and verdicts at ``alpha``."""
    family = [comparison(preds, pair, cell) for pair in pairs for cell in cells]
    adjusted = holm([1.0 if c["p"] is None else c["p"] for c in family])
    for c, p_holm in zip(family, adjusted):
        if c["p"] is not None:
            c["p_holm"] = p_holm
            c["verdict"] = ("A better" if c["diff"] > 0 else "B better") if p_holm <= alpha else "no difference"
    return {"alpha": alpha, "test": "exact two-sided paired sign-flip permutation test (McNemar), Holm-adjusted",
            "size": len(family), "comparisons": family}
