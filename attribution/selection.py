"""Neuron selection (docs/DESIGN.md §2): per example, then over the corpus.

Per example and side: keep scores >= ``threshold_ratio`` x the example's max, then its ``top_k`` (ties go to
the lower flat index, so the result never depends on sort internals). Over the corpus: shared = in any relevant
top-k and in any irrelevant top-k; relevant-only / irrelevant-only = the rest of each side. Each group is ranked
by the number of examples it appears in (then by its summed normalized score, then by position) and cut to its
size. Target layers = the layers densest in irrelevant-only + shared neurons (later layer wins a tie).
Everything here is a pure function of integer counts and per-example lists, so it is the same on every rank.
"""
from __future__ import annotations

import torch

from neurorit.neuron_map import NeuronMap


def example_topk(attr: torch.Tensor, threshold_ratio: float, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat neuron ids ``[top_k]`` (-1 = empty) and their scores (0 = empty) for one ``[layers, d_ff]`` map."""
    flat = attr.flatten().double()
    ids = torch.full((top_k,), -1, dtype=torch.long)
    scores = torch.zeros(top_k, dtype=torch.float64)
    peak = flat.max()
    if not peak > 0:
        return ids, scores
    cand = torch.nonzero(flat >= threshold_ratio * peak).flatten()
    order = torch.sort(flat[cand], descending=True, stable=True).indices[:top_k]
    ids[: len(order)] = cand[order]
    scores[: len(order)] = flat[cand[order]]
    return ids, scores


def _ranked(mask: torch.Tensor, count: torch.Tensor, score: torch.Tensor, n: int) -> torch.Tensor:
    """Flat ids where ``mask``, best first (count desc, score desc, id asc), at most ``n``."""
    ids = torch.nonzero(mask.flatten()).flatten()
    by_score = ids[torch.sort(score.flatten()[ids], descending=True, stable=True).indices]
    by_count = by_score[torch.sort(count.flatten()[by_score], descending=True, stable=True).indices]
    return by_count[:n]


def select_groups(counts: torch.Tensor, scores: torch.Tensor, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """``counts`` / ``scores``: ``[2 (relevant, irrelevant), layers, d_ff]``. Returns group -> flat ids, best first."""
    rel, irr = counts[0] > 0, counts[1] > 0
    total_count, total_score = counts.sum(0), scores.sum(0)
    return {
        "relevant_only": _ranked(rel & ~irr, counts[0], scores[0], sizes["relevant_only"]),
        "irrelevant_only": _ranked(irr & ~rel, counts[1], scores[1], sizes["irrelevant_only"]),
        "shared": _ranked(rel & irr, total_count, total_score, sizes["shared"]),
    }


def target_layers(groups: dict[str, torch.Tensor], width: int, layers: int, n: int) -> list[int]:
    """The ``n`` layers holding most irrelevant-only + shared neurons, ascending."""
    chosen = torch.cat([groups["irrelevant_only"], groups["shared"]])
    density = torch.bincount(torch.div(chosen, width, rounding_mode="floor"), minlength=layers)
    order = sorted(range(layers), key=lambda layer: (-int(density[layer]), -layer))
    return sorted(order[:n])


def neuron_map_from_stats(stats, sizes: dict[str, int], n_target_layers: int, fingerprint: dict,
                          provenance: dict) -> NeuronMap:
    """The neuron map of reduced ``attribution.stats.NeuronStats``: docs/DESIGN.md §2 selection."""
    layers, width = stats.shape
    counts = stats.counts()
    chosen = select_groups(counts, stats.score_sums(), sizes)
    flat_counts = counts.flatten(1)
    groups = {g: torch.stack([ids // width, ids % width, flat_counts[0, ids], flat_counts[1, ids]], dim=1)
              for g, ids in chosen.items()}
    return NeuronMap(groups, target_layers(chosen, width, layers, n_target_layers), fingerprint, provenance)
