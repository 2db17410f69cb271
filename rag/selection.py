"""Choosing on dev, by rules written in the config (``selection.*``) before any test number is seen (issue 19).
``scripts/demo.py`` runs the trials; this module holds the rules and the record they leave, ``selection.json``
(the report copies it into ``results.json``):

- **Stage 1's budget and learning rate.** The grid ``selection.stage1_steps`` x ``selection.stage1_lrs`` is tried
  in order of cost (fewest steps first, then the smaller learning rate) on Neuro-RIT's stage 1, and stops at the
  first point that passes: on dev, the stage-1 probe (``rag/stage1_probe.py``) finds the end token first on at least
  ``stage1_noise_end`` of the noise-only prompts, and gold-only Match is at most ``stage1_gold_drop`` below the base
  model's. Every method with a stage 1 then trains at that point. When no point passes: the point with the largest
  noise-only share among those within the gold bound, else the point that costs gold least (stage 1 that ends
  every answer is no noise filter), and the record says the rule was not reached.
- **Stage 2's learning rate**, the same way for every trained method: each value of ``selection.lrs``; the one with
  the highest mean dev Match over ``selection.settings`` wins (a tie: the earlier value of the grid).
"""
from __future__ import annotations

from typing import Sequence

from neurorit.config import SelectionConfig


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
    noise = float(probe["noise_only"]["end_share"])
    return {"max_steps": steps, "lr": lr, "noise_end_share": noise, "gold_end_share": probe["gold"]["end_share"],
            "gold_match": gold_match, "base_gold_match": base_gold_match,
            "passes": noise >= sel.stage1_noise_end and gold_match >= base_gold_match - sel.stage1_gold_drop}


def pick_stage1(trials: Sequence[dict], sel: SelectionConfig) -> dict:
    """The chosen point of the trials tried (in grid order): the first that passes; else the largest noise-only
    share among the points within the gold bound; else the highest gold-only Match (ties: the earlier point).
    ``{"index", "reached"}``."""
    for i, t in enumerate(trials):
        if t["passes"]:
            return {"index": i, "reached": True}
    within = [i for i, t in enumerate(trials) if t["gold_match"] >= t["base_gold_match"] - sel.stage1_gold_drop]
    if within:
        return {"index": max(within, key=lambda i: (trials[i]["noise_end_share"], -i)), "reached": False}
    return {"index": max(range(len(trials)), key=lambda i: (trials[i]["gold_match"], -i)), "reached": False}


def dev_score(summary: dict, settings: Sequence[str]) -> float:
    """The learning-rate criterion: mean dev Match over ``settings``."""
    return sum(match_of(summary, s) for s in settings) / len(settings)


def pick_lr(scores: Sequence[tuple[float, float]]) -> float:
    """The learning rate with the highest score; a tie goes to the earlier one of the grid."""
    best = max(range(len(scores)), key=lambda i: (scores[i][1], -i))
    return scores[best][0]


def selection_record(sel: SelectionConfig, stage1: dict, stage2: dict) -> dict:
    """What ``selection.json`` holds: the rules' settings, the stage-1 trials and choice, and per method its
    learning-rate key, the grid's dev scores and the chosen value."""
    return {"rules": {"lrs": list(sel.lrs), "settings": list(sel.settings), "dev_examples": sel.dev_examples,
                      "stage1_steps": list(sel.stage1_steps), "stage1_lrs": list(sel.stage1_lrs),
                      "stage1_noise_end": sel.stage1_noise_end, "stage1_gold_drop": sel.stage1_gold_drop},
            "stage1": stage1, "stage2": stage2}
