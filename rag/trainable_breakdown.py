"""Where a trained stage's trainable parameters sit, from the files a run leaves (``rag/analysis.py``).

Training records the split of its count in ``train_summary.json`` (``trainable``, from
``train/trainable.py: Trainable.breakdown``): the ids of the neurons given deltas, per layer; the layers whose whole
FFN trains; and the parameters of the deltas, of those FFNs and of anything else (LoRA adapters, full tuning, the
release masks' weights). The breakdown divides that by the run's neuron map (``<run>/mining``):

- per group: a neuron with a delta counts for the map's group that holds it (``relevant_only``,
  ``irrelevant_only``, ``shared``), else ``unmapped_neurons`` (a random arm's draws that the map does not hold);
  each neuron carries ``delta_params / neurons`` parameters (a gate row, an up row and a down column: ``3 x
  hidden``, ``2 x hidden`` with frozen gates); ``ffn_layers`` is the whole-FFN count, ``other`` the rest;
- per layer: the neurons with deltas and their parameters, and the whole-FFN parameters (the FFN count split
  evenly over its layers: every layer's FFN has one size in the supported families).

The groups add up to the recorded ``trainable_params``. A summary written before training recorded the split holds
the total only: it is reported as ``other`` with ``"recorded_split": false``.
"""
from __future__ import annotations

import json

from neurorit.neuron_map import GROUPS, NeuronMap
from neurorit.run_layout import StageFiles

UNMAPPED = "unmapped_neurons"


def stage_breakdown(files: StageFiles, nmap: NeuronMap) -> dict:
    """``{"recorded", "recorded_split", "groups": {group: params}, "per_layer": {layer: {...}}, "ffn_layers"}`` of
    one finished stage (see the module docstring)."""
    with open(files.summary, encoding="utf-8") as fh:
        summary = json.load(fh)
    recorded = int(summary.get("trainable_params") or 0)
    split = summary.get("trainable")
    if not split:
        return {"recorded": recorded, "recorded_split": False, "groups": {"other": recorded}, "per_layer": {},
                "ffn_layers": []}
    neurons = {int(layer): ids for layer, ids in split["neurons"].items()}
    total = sum(len(ids) for ids in neurons.values())
    per_neuron = split["delta_params"] // total if total else 0
    groups = {g: per_neuron * n for g, n in _group_counts(neurons, nmap).items()}
    groups.update({"ffn_layers": split["ffn_params"], "other": split["other_params"]})
    return {"recorded": recorded, "recorded_split": True, "groups": groups, "ffn_layers": split["ffn_layers"],
            "per_layer": _per_layer(neurons, split, per_neuron)}


def _group_counts(neurons: dict[int, list], nmap: NeuronMap) -> dict[str, int]:
    """How many of ``neurons`` (``{layer: ids}``) each map group holds; the rest as ``unmapped_neurons``."""
    owner = {(int(layer), int(i)): g for g in GROUPS for layer, ids in nmap.per_layer(g).items() for i in ids.tolist()}
    counts = dict.fromkeys((*GROUPS, UNMAPPED), 0)
    for layer, ids in neurons.items():
        for i in ids:
            counts[owner.get((layer, int(i)), UNMAPPED)] += 1
    return counts


def _per_layer(neurons: dict[int, list], split: dict, per_neuron: int) -> dict[str, dict]:
    """``{layer: {"neurons", "neuron_params", "ffn_params"}}`` of the layers that train anything, in order."""
    ffn_layers = split["ffn_layers"]
    per_ffn = split["ffn_params"] // len(ffn_layers) if ffn_layers else 0
    layers = sorted(set(neurons) | set(ffn_layers))
    counts = {layer: len(neurons.get(layer, [])) for layer in layers}
    return {str(layer): {"neurons": n, "neuron_params": per_neuron * n, "ffn_params": per_ffn if layer in ffn_layers
                         else 0} for layer, n in counts.items()}
