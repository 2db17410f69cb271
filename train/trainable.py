"""The trainable set of one stage and the neuron-level rules behind it (used by ``train/recipes.py``).

- Neuron deltas (gate row, up row, down column) of a recipe's groups in every layer, plus, with
  ``target_layers``, the whole FFN (gate, up, down) of the mined target layers. A group neuron inside a target
  layer then gets no delta: its rows and column are already trainable as part of that FFN, and a second
  parameter for the same weights would double its effective learning rate. Stage 2 of Neuro-RIT therefore
  trains ``3 x hidden x (group neurons outside target layers) + the target layers' FFN weights``. With
  ``random``, each layer's neurons are replaced by as many distinct random neurons of that layer (seeded by
  ``runtime.seed``); target layers unchanged. With ``random_layers``, the target layers are replaced by as many
  distinct layers drawn at random over the whole model (seeded; the draw may include mined target layers).
- With ``stage<N>.train_gate: false`` the gate projections stay frozen: no gate-row deltas train, and the target
  layers' gate weights do not (the released Neuro-RIT stage 2 trained up / down only). Layouts that fuse gate and
  up in one weight (Phi-3, MoE experts) cannot freeze one half of a weight and are refused when target layers
  train. LoRA's rank still matches the default count (gates trained).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from model_patches import FFNPatcher, get_ffn_layout
from neurorit.memory import neuron_params
from neurorit.errors import UserError


def numel(param: torch.nn.Parameter) -> int:
    """Full size of a parameter, also when ZeRO-3 has partitioned it away."""
    return int(getattr(param, "ds_numel", param.numel()))


@dataclass
class Trainable:
    """The trainable set of one stage and how its size breaks down."""

    params: list = field(default_factory=list)
    neurons: dict = field(default_factory=dict)  # layer -> LongTensor of neurons with deltas
    full_layers: list = field(default_factory=list)  # layers whose whole FFN trains
    delta_count: int = 0
    ffn_count: int = 0
    other_count: int = 0
    details: dict = field(default_factory=dict)  # recipe-specific fields for train_summary.json
    description: str = ""  # what the parameters are, when not neuron deltas and FFN weights

    @property
    def count(self) -> int:
        return self.delta_count + self.ffn_count + self.other_count

    def breakdown(self) -> dict:
        """How ``count`` splits, for ``train_summary.json`` (``rag/trainable_breakdown.py`` reads it): the neuron
        ids with deltas per layer, the layers whose whole FFN trains, and the three counts."""
        return {"delta_params": self.delta_count, "ffn_params": self.ffn_count, "other_params": self.other_count,
                "neurons": {str(layer): [int(i) for i in ids.tolist()] for layer, ids in sorted(self.neurons.items())},
                "ffn_layers": [int(layer) for layer in self.full_layers]}

    def describe(self, hidden: int) -> str:
        n = sum(int(v.numel()) for v in self.neurons.values())
        if self.description:
            return f"trainable parameters: {self.count:,} = {self.description}"
        return (f"trainable parameters: {self.count:,} = deltas of {n} neurons at hidden {hidden} "
                f"({self.delta_count:,})"
                f" + FFN of layers {self.full_layers} ({self.ffn_count:,}) + other ({self.other_count:,})")


def _group_neurons(nmap, groups: tuple[str, ...]) -> dict[int, torch.Tensor]:
    """Union of ``groups``, per layer (sorted ids)."""
    merged: dict[int, list] = {}
    for group in groups:
        for layer, ids in nmap.per_layer(group).items():
            merged.setdefault(int(layer), []).append(torch.as_tensor(ids, dtype=torch.long))
    return {layer: torch.cat(parts).unique() for layer, parts in sorted(merged.items())}


def randomized(spec: dict[int, torch.Tensor], width: int, seed: int) -> dict[int, torch.Tensor]:
    """As many distinct random neurons per layer as ``spec`` has, seeded per layer."""
    out = {}
    for layer, ids in spec.items():
        gen = torch.Generator().manual_seed(seed * 100_003 + layer)
        out[layer] = torch.randperm(width, generator=gen)[: ids.numel()].sort().values
    return out


def random_layers(nmap, seed: int) -> list[int]:
    """As many distinct layers as the map has target layers, drawn at random over all layers (seeded)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + 99_991)
    draw = torch.randperm(int(nmap.fingerprint["num_layers"]), generator=gen)[: len(nmap.target_layers)]
    return sorted(int(layer) for layer in draw)


def ffn_layers(rule, nmap, seed: int) -> list[int]:
    """The layers whose whole FFN a neuron-level rule trains: none, the map's target layers, or (``random_layers``)
    as many random ones."""
    if not rule.target_layers:
        return []
    return random_layers(nmap, seed) if rule.random_layers else sorted(int(t) for t in nmap.target_layers)


def neuron_spec(rule, nmap, width: int, seed: int) -> tuple[dict, list]:
    """``({layer: neurons with deltas}, [layers whose whole FFN trains])`` for a neuron-level rule (anything with
    ``groups``, ``random``, ``target_layers`` and ``random_layers``)."""
    targets = ffn_layers(rule, nmap, seed)
    spec = {layer: ids for layer, ids in _group_neurons(nmap, rule.groups).items() if layer not in targets and ids.numel()}
    if rule.random:
        spec = randomized(spec, width, seed)
    return spec, targets


def planned_neuron_count(rule, nmap, model: torch.nn.Module, seed: int) -> int:
    """What a neuron-level ``rule`` trains on ``model``, counted without building anything."""
    layout = get_ffn_layout(model)
    spec, full_layers = neuron_spec(rule, nmap, layout.intermediate_size, seed)
    modules = layout.ffn_modules(model)
    ffn = sum(numel(p) for layer in full_layers for p in modules[layer].parameters())
    return neuron_params(model.config.hidden_size, sum(int(ids.numel()) for ids in spec.values())) + ffn


def gate_weights(patcher: FFNPatcher, layers: list) -> set:
    """``id`` of the gate-only weights of ``layers``' FFNs; a UserError where a weight holds the gate and more."""
    layout = patcher.layout
    fused = [role for role, owned in layout.ROLES.items() if len(owned) > 1 and "gate" in dict(owned)]
    if fused and layers:
        raise UserError(f"train_gate false: the {layout.layout} layout of this model keeps the gate in one weight "
                        f"with the up projection ({fused[0]}), so the target layers' gates cannot be frozen alone; "
                        f"use train_gate true")
    modules = layout.ffn_modules(patcher.model)
    return {id(w) for layer in layers for role, w in layout.weights(modules[layer]).items()
            if layout.ROLES[role] == (("gate", 0),)}
