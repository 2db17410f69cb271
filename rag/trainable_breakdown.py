"""Where a trained stage's trainable parameters sit, recomputed from the files a run leaves (``rag/analysis.py``).

``train_summary.json`` records a stage's method, stage and total ``trainable_params`` (and, for ``random_layers``,
the layers drawn). The breakdown rebuilds the trainable set the way training chose it, from files only:

- the method registry (``neurorit/methods.py``) gives the stage's rule; for the ``neurons`` recipe,
  ``train/trainable.py: neuron_spec`` applied to the run's neuron map (``<run>/mining``) gives the neurons with
  deltas per layer and the layers whose whole FFN trains, with the seed (``runtime.seed``) and
  ``stage<N>.train_gate`` of the stage's own ``config.yaml``;
- the stage's export ``config.json`` gives the hidden size, the map's fingerprint the FFN width;
- a neuron's delta is a gate row, an up row and a down column (``3 x hidden``; ``2 x hidden`` with frozen gates), a
  whole FFN ``3 x hidden x width`` (``2 x``) (``neurorit/memory.py``).

Groups: ``relevant_only`` / ``irrelevant_only`` / ``shared`` (the mined neurons outside the FFN layers; a random
arm's draws are ``random_neurons``), ``ffn_layers`` (the whole FFNs) and ``other``: the recorded total minus all of
these, i.e. whatever the map does not explain (everything of LoRA or full tuning; 0 for a neuron-level stage whose
FFN is the gated kind counted here; non-zero there says the recount disagrees with training).
"""
from __future__ import annotations

import json
import os

import yaml

from neurorit import methods
from neurorit.memory import ffn_params, neuron_params
from neurorit.neuron_map import NeuronMap
from neurorit.run_layout import StageFiles

EXPORT_CONFIG = "config.json"  # Hugging Face's model config inside an export


def _read(path: str, loader) -> dict:
    with open(path, encoding="utf-8") as fh:
        return loader(fh) or {}


def stage_breakdown(files: StageFiles, nmap: NeuronMap | None) -> dict:
    """``{"recorded", "groups": {group: params}, "per_layer": {layer: {...}}, "ffn_layers"}`` of one finished stage
    (see the module docstring)."""
    summary = _read(files.summary, json.load)
    recorded = int(summary.get("trainable_params") or 0)
    rule = methods.METHODS.get(summary.get("method", ""))
    rule = rule.stages.get(summary.get("stage", "")) if rule else None
    export_config = os.path.join(files.export, EXPORT_CONFIG)
    if rule is None or rule.recipe != "neurons" or nmap is None or not os.path.isfile(export_config):
        return {"recorded": recorded, "groups": {"other": recorded}, "per_layer": {}, "ffn_layers": []}
    hidden = _read(export_config, json.load)["hidden_size"]
    return _neuron_breakdown(files, (summary["stage"], rule), nmap, recorded, hidden)


def _neuron_breakdown(files: StageFiles, stage_rule: tuple, nmap: NeuronMap, recorded: int, hidden: int) -> dict:
    """The breakdown of a ``neurons``-recipe stage, from its ``(stage, rule)``, the map and its own config."""
    from train.recipes import build
    from train.trainable import neuron_spec

    stage, rule = stage_rule
    cfg = _read(files.config, yaml.safe_load)
    seed = int(cfg.get("runtime", {}).get("seed", 0))
    gated = bool(cfg.get(stage, {}).get("train_gate", True))
    width = int(nmap.fingerprint["intermediate_size"])
    recipe = build(rule)
    spec, full_layers = neuron_spec(recipe, nmap, width, seed)
    per_neuron, per_ffn = (neuron_params(hidden, 1), ffn_params(hidden, width))
    if not gated:
        per_neuron, per_ffn = per_neuron * 2 // 3, per_ffn * 2 // 3
    groups = _group_params(recipe, nmap, spec, per_neuron) if spec else {}
    groups["ffn_layers"] = per_ffn * len(full_layers)
    groups["other"] = recorded - sum(groups.values())
    per_layer = {str(layer): {"neurons": int(ids.numel()), "neuron_params": per_neuron * int(ids.numel()),
                              "ffn_params": 0} for layer, ids in spec.items()}
    for layer in full_layers:
        per_layer[str(layer)] = {"neurons": 0, "neuron_params": 0, "ffn_params": per_ffn}
    return {"recorded": recorded, "groups": groups, "ffn_layers": full_layers,
            "per_layer": dict(sorted(per_layer.items(), key=lambda kv: int(kv[0])))}


def _group_params(recipe, nmap: NeuronMap, spec: dict, per_neuron: int) -> dict:
    """Delta parameters per mined group in the layers of ``spec`` (the layers with deltas); a random recipe's draws
    as ``random_neurons``."""
    if recipe.random:
        return {"random_neurons": per_neuron * sum(int(ids.numel()) for ids in spec.values())}
    return {g: per_neuron * sum(len(ids) for layer, ids in nmap.per_layer(g).items() if int(layer) in spec)
            for g in recipe.groups}
