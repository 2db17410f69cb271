"""Mining diagnostics: can this neuron map be trusted? (issue 19, docs/DESIGN.md §2 selection)

Three measurements, all pure functions of the reduced statistics (per-example top-k ids and targets, which cross
ranks as values with one contributor each, so 1 rank and N ranks give the same numbers):

- **fill**: how many of the requested neurons each group got (an exclusive group runs short when few neurons
  are exclusive to one context);
- **separation**: the mean target F with the relevant and with the irrelevant passage, and the share of
  examples where F(relevant) > F(irrelevant) (a target that does not tell the contexts apart gives groups that
  do not either);
- **stability**: the groups selected, with the same sizes and rule, on two disjoint halves of the examples
  (even / odd example index), and their Jaccard overlap per group; computed from the per-example selections,
  without mining twice.

Warnings (thresholds below): a group filled below ``FILL_WARN`` of its request; halves whose Jaccard is below
``STABILITY_WARN`` for a group; F(relevant) > F(irrelevant) in at most ``SEPARATION_WARN`` of the examples.
"""
from __future__ import annotations

import torch

from attribution.selection import select_groups
from attribution.stats import SIDES, NeuronStats
from neurorit.neuron_map import GROUPS, NeuronMap

FILL_WARN = 0.8  # a group holding fewer than 80% of the neurons asked for is under-filled
STABILITY_WARN = 0.3  # half-split Jaccard below 0.3 (about 46% of each half's group shared) is unstable
SEPARATION_WARN = 0.5  # relevant > irrelevant in at most half of the examples: the target does not separate


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a ∩ b| / |a ∪ b| of two id sets; 0.0 when both are empty."""
    sa, sb = set(a.tolist()), set(b.tolist())
    union = sa | sb
    return len(sa & sb) / len(union) if union else 0.0


def half_masks(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The even- and odd-indexed examples of ``n``."""
    idx = torch.arange(n)
    return idx % 2 == 0, idx % 2 == 1


def fill(nmap: NeuronMap, sizes: dict[str, int]) -> dict[str, dict]:
    return {g: {"requested": int(sizes[g]), "got": len(nmap.groups[g]),
                "share": len(nmap.groups[g]) / sizes[g] if sizes[g] else 1.0} for g in GROUPS}


def separation(stats: NeuronStats) -> dict:
    ok = stats.ok()
    f = stats.f_input[ok]
    out = {"examples": int(ok.sum())}
    out.update({f"mean_{side}": float(f[:, i].mean()) if len(f) else 0.0 for i, side in enumerate(SIDES)})
    out["share_relevant_above"] = float((f[:, 0] > f[:, 1]).double().mean()) if len(f) else 0.0
    return out


def stability(stats: NeuronStats, sizes: dict[str, int]) -> dict:
    """Groups of the even and the odd half (same sizes and rule as the map) and their Jaccard per group."""
    halves = [select_groups(stats.counts(m), stats.score_sums(m), sizes) for m in half_masks(len(stats.status))]
    ok = stats.ok()
    used = [int((ok & m).sum()) for m in half_masks(len(stats.status))]
    return {"examples": used,
            "groups": {g: {"sizes": [len(h[g]) for h in halves], "jaccard": jaccard(halves[0][g], halves[1][g])}
                       for g in GROUPS}}


def warnings(diag: dict) -> list[str]:
    out = []
    for g, f in diag["fill"].items():
        if f["requested"] and f["share"] < FILL_WARN:
            out.append(f"{g} under-filled: {f['got']} of {f['requested']} requested (< {FILL_WARN:.0%}); few "
                       f"neurons are exclusive to one context: mine more examples or ask for fewer")
    for g, s in diag["stability"]["groups"].items():
        if diag["fill"][g]["requested"] and s["jaccard"] < STABILITY_WARN:
            out.append(f"{g} unstable: the two halves' groups overlap by Jaccard {s['jaccard']:.2f} "
                       f"(< {STABILITY_WARN}); the group is mostly noise at this number of examples")
    sep = diag["separation"]
    if sep["examples"] and sep["share_relevant_above"] <= SEPARATION_WARN:
        out.append(f"the target does not separate the contexts: F(relevant) > F(irrelevant) in "
                   f"{sep['share_relevant_above']:.0%} of examples (<= {SEPARATION_WARN:.0%})")
    return out


def mining_diagnostics(stats: NeuronStats, nmap: NeuronMap, sizes: dict[str, int]) -> dict:
    """Fill, separation, half-split stability and the warnings they raise (JSON-ready)."""
    diag = {"fill": fill(nmap, sizes), "separation": separation(stats), "stability": stability(stats, sizes),
            "thresholds": {"fill": FILL_WARN, "stability_jaccard": STABILITY_WARN, "separation": SEPARATION_WARN}}
    diag["warnings"] = warnings(diag)
    return diag


def diagnostics_text(diag: dict) -> str:
    """The diagnostics as summary lines."""
    sep, stab = diag["separation"], diag["stability"]
    lines = ["fill: " + ", ".join(f"{g} {f['got']}/{f['requested']}" for g, f in diag["fill"].items()),
             f"separation: mean F relevant {sep['mean_relevant']:.4f} vs irrelevant {sep['mean_irrelevant']:.4f}; "
             f"relevant > irrelevant in {sep['share_relevant_above']:.1%} of {sep['examples']} examples",
             f"stability (even / odd halves, {stab['examples'][0]} / {stab['examples'][1]} examples): " + ", ".join(
                 f"{g} Jaccard {s['jaccard']:.2f} ({s['sizes'][0]} / {s['sizes'][1]})"
                 for g, s in stab["groups"].items())]
    lines += [f"WARNING: {w}" for w in diag["warnings"]]
    return "\n".join(lines)
