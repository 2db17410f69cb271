"""Choosing on dev, by rules written in the config (``selection.*``) before any test number is seen (issue 19).
``scripts/demo.py`` runs the trials; this module holds the rules and the record they leave, ``selection.json``
(the report copies it into ``results.json``):

- **Stage 1's budget and learning rate.** The grid ``selection.stage1_steps`` x ``selection.stage1_lrs`` is tried
  in order of cost (fewest steps first, then the smaller learning rate) on Neuro-RIT's stage 1, and stops at the
  first point that passes: on dev, the stage-1 probe (``rag/stage1_probe.py``) finds the end token first on at least
  ``stage1_noise_end`` of the noise-only prompts, and gold-only Match is at most ``stage1_gold_drop`` below the base
  model's with at most ``stage1_gold_end`` of the gold-only prompts ended (the gold bound). When no grid point
  passes, up to ``stage1_bisect`` more points are tried at the largest budget, each at the geometric mean of the
  largest learning rate that did too little (within the gold bound) and the smallest that cost gold too much
  (``stage1_bisect_lr``). Every method with a stage 1 then trains at the chosen point. When no point passes: the
  point with the largest noise-only share among those within the gold bound, else the point that costs gold least
  (stage 1 that ends every answer is no noise filter), and the record says the rule was not reached; it also keeps
  the best gap found (noise-only end share minus gold-only end share). At the chosen point the mined stage-1
  neurons are compared with as many random ones (``random_neurons``' stage 1) on the same dev questions: each arm's
  gap and the paired difference with its interval (``mined_vs_random_stage1``).
- **Stage 2's learning rate**, the same way for every trained method: each value of ``selection.lrs``, then, while
  the winner sits at an edge of the values tried, a factor-3 step beyond it (at most ``selection.widen`` more,
  ``widen_lr``); the one with the highest mean dev Match over ``selection.settings`` wins (a tie: the value tried
  first). With ``selection.share_control_lr`` a random control and its mined arm (``Method.control_of``) are
  trained at each value and scored by the mean of the two arms: one choice for both, neither favoured.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from neurorit.config import SelectionConfig
from neurorit.metrics import bootstrap_ci, mean


def stage1_grid(sel: SelectionConfig) -> list[tuple[int, float]]:
    """The stage-1 points in the order they are tried: fewest steps first, then the smaller learning rate."""
    return [(steps, lr) for steps in sorted(sel.stage1_steps) for lr in sorted(sel.stage1_lrs)]


def point_tag(steps: int, lr: float) -> str:
    """A stage-1 point's folder name, e.g. ``steps60_lr0.001``."""
    return f"steps{steps}_lr{lr:g}"


def match_of(summary: dict, setting: str) -> float:
    """Match of one setting in an evaluation summary (``<name>.eval.json``)."""
    return float(summary["settings"][setting]["match"])


def stage1_trial(steps: int, lr: float, probe: dict, gold_match: float, base_gold_match: float,
                 sel: SelectionConfig) -> dict:
    """One stage-1 point's record: what the rule reads and whether it passes."""
    noise, gold_end = float(probe["noise_only"]["end_share"]), float(probe["gold"]["end_share"])
    gold_ok = gold_match >= base_gold_match - sel.stage1_gold_drop and gold_end <= sel.stage1_gold_end
    return {"max_steps": steps, "lr": lr, "noise_end_share": noise, "gold_end_share": gold_end,
            "gap": noise - gold_end, "gold_match": gold_match, "base_gold_match": base_gold_match,
            "within_gold_bound": gold_ok, "passes": noise >= sel.stage1_noise_end and gold_ok}


def pick_stage1(trials: Sequence[dict], sel: SelectionConfig) -> dict:
    """The chosen point of the trials tried (in the order tried): the first that passes; else the largest
    noise-only share among the points within the gold bound; else the highest gold-only Match (ties: the earlier
    point). ``{"index", "reached", "best_gap"}``, the last the index of the largest noise-minus-gold end share."""
    best_gap = max(range(len(trials)), key=lambda i: (trials[i]["gap"], -i))
    for i, t in enumerate(trials):
        if t["passes"]:
            return {"index": i, "reached": True, "best_gap": best_gap}
    within = [i for i, t in enumerate(trials) if t["within_gold_bound"]]
    if within:
        return {"index": max(within, key=lambda i: (trials[i]["noise_end_share"], -i)), "reached": False,
                "best_gap": best_gap}
    return {"index": max(range(len(trials)), key=lambda i: (trials[i]["gold_match"], -i)), "reached": False,
            "best_gap": best_gap}


def question_gaps(probe: dict) -> dict[str, int]:
    """Per question probed in both settings: ended on noise-only minus ended on gold-only (1, 0 or -1)."""
    noise, gold = probe["noise_only"]["ended"], probe["gold"]["ended"]
    return {q: noise[q] - gold[q] for q in noise if q in gold}


def mined_vs_random_stage1(mined: dict, random: dict, n_resamples: int = 1000) -> dict:
    """Mined minus random stage-1 neurons at the same point on the same dev questions: each arm's gap (noise-only
    end share minus gold-only end share, over the questions probed in both settings) and the paired difference of
    the per-question gaps with its bootstrap 95% interval (an interval above 0: the mined neurons suppress noise
    better than as many random ones)."""
    a, b = question_gaps(mined), question_gaps(random)
    shared = sorted(set(a) & set(b))
    diffs = [a[q] - b[q] for q in shared]
    return {"n": len(shared), "mined_gap": mean([a[q] for q in shared]), "random_gap": mean([b[q] for q in shared]),
            "difference": mean(diffs), "ci95": bootstrap_ci(diffs, n_resamples)}


def stage1_bisect_lr(trials: Sequence[dict], sel: SelectionConfig) -> Optional[float]:
    """The next stage-1 learning rate at the largest budget of the grid, or None: when a point passed, when
    ``stage1_bisect`` points were already bisected, or when that budget has no bracket (a too-weak lr within the
    gold bound below a too-strong lr outside it). The geometric mean of the bracket: learning rates act on a log
    scale."""
    if any(t["passes"] for t in trials) or sum(t.get("bisected", False) for t in trials) >= sel.stage1_bisect:
        return None
    at_budget = [t for t in trials if t["max_steps"] == max(sel.stage1_steps)]
    weak = [t["lr"] for t in at_budget if t["within_gold_bound"]]
    strong = [t["lr"] for t in at_budget if not t["within_gold_bound"]]
    low = max(weak, default=None)
    high = min((lr for lr in strong if low is not None and lr > low), default=None)
    if low is None or high is None:
        return None
    return math.sqrt(low * high)


def dev_score(summary: dict, settings: Sequence[str]) -> float:
    """The learning-rate criterion: mean dev Match over ``settings``."""
    return sum(match_of(summary, s) for s in settings) / len(settings)


def pick_lr(scores: Sequence[tuple[float, float]]) -> float:
    """The learning rate with the highest score; a tie goes to the one tried first."""
    best = max(range(len(scores)), key=lambda i: (scores[i][1], -i))
    return scores[best][0]


WIDEN_FACTOR = 3.0


def widen_lr(scores: Sequence[tuple[float, float]], sel: SelectionConfig) -> Optional[float]:
    """The next stage-2 learning rate to try, or None: while the winner of the values tried is the largest (or the
    smallest) of them, a factor-3 step above (below) it, at most ``selection.widen`` values beyond the grid."""
    tried = sorted(lr for lr, _ in scores)
    if len(tried) < 2 or len(scores) - len(sel.lrs) >= sel.widen:
        return None
    chosen = pick_lr(scores)
    if chosen == tried[-1]:
        return chosen * WIDEN_FACTOR
    if chosen == tried[0]:
        return chosen / WIDEN_FACTOR
    return None


def interior(scores: Sequence[tuple[float, float]]) -> bool:
    """Whether the chosen learning rate has a tried value on each side of it."""
    tried = sorted(lr for lr, _ in scores)
    return tried[0] < pick_lr(scores) < tried[-1]


def selection_record(sel: SelectionConfig, stage1: dict, stage2: dict) -> dict:
    """What ``selection.json`` holds: the rules' settings, the stage-1 trials and choice, and per method its
    learning-rate key, the grid's dev scores and the chosen value."""
    return {"rules": {"lrs": list(sel.lrs), "settings": list(sel.settings), "dev_examples": sel.dev_examples,
                      "stage1_steps": list(sel.stage1_steps), "stage1_lrs": list(sel.stage1_lrs),
                      "stage1_noise_end": sel.stage1_noise_end, "stage1_gold_drop": sel.stage1_gold_drop,
                      "stage1_gold_end": sel.stage1_gold_end, "stage1_bisect": sel.stage1_bisect,
                      "widen": sel.widen, "share_control_lr": sel.share_control_lr,
                      "dev_per_kind": sel.dev_per_kind},
            "stage1": stage1, "stage2": stage2}
