"""Which parameters train, per method and stage; everything else is frozen and stays out of the optimizer.

Methods (``stage<N>.method``):

- ``neurorit``: stage 1 = neuron deltas (gate row, up row, down column) of the irrelevant-only neurons of every
  layer. Stage 2 = deltas of all three groups (relevant-only, irrelevant-only, shared) of every layer **outside**
  the target layers, plus the whole FFN (gate, up, down) of the target layers. A group neuron inside a target
  layer gets no delta: its rows and column are already trainable as part of that FFN, and a second parameter for
  the same weights would double its effective learning rate. Stage 2's trainable count is therefore
  ``3 x hidden x (group neurons outside target layers) + sum of the target layers' FFN weight sizes``.
- ``random``: the same, with each layer's neurons replaced by as many distinct random neurons of that layer
  (seeded by ``runtime.seed``); target layers unchanged.
- ``layer``: the whole FFN of the target layers only.
- ``full`` and ``robust_sft``: every parameter.
- ``none``: nothing (the stage only re-exports its input).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from model_patches import FFNPatcher

NEURON_GROUPS = {"stage1": ("irrelevant_only",), "stage2": ("relevant_only", "irrelevant_only", "shared")}
NEEDS_MAP = ("neurorit", "random", "layer")


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

    @property
    def count(self) -> int:
        return self.delta_count + self.ffn_count + self.other_count

    def describe(self, hidden: int) -> str:
        n = sum(int(v.numel()) for v in self.neurons.values())
        return (f"trainable parameters: {self.count:,} = deltas 3 x hidden {hidden} x {n} neurons ({self.delta_count:,})"
                f" + FFN of layers {self.full_layers} ({self.ffn_count:,}) + other ({self.other_count:,})")


def _stage_neurons(nmap, stage: str) -> dict[int, torch.Tensor]:
    """Union of the stage's neuron groups, per layer (sorted ids)."""
    merged: dict[int, list] = {}
    for group in NEURON_GROUPS[stage]:
        for layer, ids in nmap.per_layer(group).items():
            merged.setdefault(int(layer), []).append(torch.as_tensor(ids, dtype=torch.long))
    return {layer: torch.cat(parts).unique() for layer, parts in sorted(merged.items())}


def _randomized(spec: dict[int, torch.Tensor], width: int, seed: int) -> dict[int, torch.Tensor]:
    """As many distinct random neurons per layer as ``spec`` has, seeded per layer."""
    out = {}
    for layer, ids in spec.items():
        gen = torch.Generator().manual_seed(seed * 100_003 + layer)
        out[layer] = torch.randperm(width, generator=gen)[: ids.numel()].sort().values
    return out


def neuron_spec(method: str, stage: str, nmap, width: int, seed: int) -> tuple[dict, list]:
    """``({layer: neurons with deltas}, [layers whose whole FFN trains])`` for a neuron-level method."""
    targets = sorted(int(t) for t in nmap.target_layers) if stage == "stage2" else []
    if method == "layer":
        return {}, sorted(int(t) for t in nmap.target_layers)
    spec = {layer: ids for layer, ids in _stage_neurons(nmap, stage).items() if layer not in targets and ids.numel()}
    if method == "random":
        spec = _randomized(spec, width, seed)
    return spec, targets


def setup_trainable(model: torch.nn.Module, patcher: FFNPatcher, method: str, stage: str, nmap,
                    seed: int) -> Trainable:
    """Freeze everything, then add deltas / unfreeze what ``method`` trains in ``stage``. Call before
    ``deepspeed.initialize``; the returned ``params`` are exactly what the optimizer gets."""
    for p in model.parameters():
        p.requires_grad_(False)
    out = Trainable()
    if method in ("full", "robust_sft"):
        out.params = list(model.parameters())
        out.other_count = sum(numel(p) for p in out.params)
    elif method in NEEDS_MAP:
        spec, full_layers = neuron_spec(method, stage, nmap, patcher.intermediate_size, seed)
        out.neurons, out.full_layers = spec, full_layers
        deltas = patcher.add_neuron_deltas(spec) if spec else []
        out.delta_count = sum(numel(p) for p in deltas)
        modules = patcher.adapter.ffn_modules(model)
        ffn = [p for layer in full_layers for p in modules[layer].parameters()]
        out.ffn_count = sum(numel(p) for p in ffn)
        out.params = deltas + ffn
    for p in out.params:
        p.requires_grad_(True)
    return out
