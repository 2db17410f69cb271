"""Per-architecture FFN adapters: where each layer's FFN neurons live in a Hugging Face model.

Neuron ``i`` of layer ``l`` is component ``i`` of the input of the down projection (DESIGN.md §2). Three layouts:

- ``gated``: separate ``gate_proj`` / ``up_proj`` / ``down_proj`` Linear modules (Llama, Mistral, Qwen2, Qwen3,
  Gemma, Gemma2);
- ``fused``: one ``gate_up_proj`` Linear whose first half of rows is the gate, then ``down_proj`` (Phi-3);
- ``moe``: routed experts stored as 3D parameters ``gate_up_proj[E, 2F, H]`` and ``down_proj[E, H, F]``
  (Mixtral, Qwen2-MoE in transformers 5). Neuron ``(expert, index)`` is flattened to ``expert * F + index``.
  The Qwen2-MoE shared expert is not part of the neuron space.

The *FFN module* of a layer is the module that owns those weights (the MLP, or the experts module); patches and
neuron deltas live on it, so ZeRO-3 gathers them together.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from neurorit.errors import UserError

_GATED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")
_FUSED = ("phi3",)
_MOE = ("mixtral", "qwen2_moe")
SUPPORTED_ARCHITECTURES = _GATED + _FUSED + _MOE


@dataclass(frozen=True)
class FFNAdapter:
    """Where the neurons live: the layout, the FFN module of each layer, and the neuron-space sizes."""

    model_type: str
    layout: str  # "gated" | "fused" | "moe"
    hidden_size: int
    expert_size: int  # F: width of one FFN (one expert for MoE)
    num_experts: int  # 1 for dense layouts

    @property
    def intermediate_size(self) -> int:
        """Size of the (flattened) neuron space of one layer."""
        return self.expert_size * self.num_experts

    def layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The decoder layers, in order."""
        return list(_decoder(model).layers)

    def ffn_module(self, layer: torch.nn.Module) -> torch.nn.Module:
        """The module that owns this layer's FFN weights (MLP, or the routed experts)."""
        return layer.mlp.experts if self.layout == "moe" else layer.mlp

    def ffn_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [self.ffn_module(layer) for layer in self.layers(model)]

    def split(self, neurons: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat neuron ids -> (expert ids, index inside the expert)."""
        return torch.div(neurons, self.expert_size, rounding_mode="floor"), neurons % self.expert_size


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(model, "model", model)
    if not hasattr(inner, "layers"):
        raise UserError(f"{type(model).__name__}: no decoder layers found (expected model.model.layers)")
    return inner


def get_ffn_adapter(model: torch.nn.Module) -> FFNAdapter:
    """The adapter for ``model`` (a causal LM); a UserError names the supported architectures otherwise."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"architecture {model_type!r} ({type(model).__name__}) is not supported; "
                        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    if model_type in _MOE:
        experts = [getattr(layer.mlp, "experts", None) for layer in _decoder(model).layers]
        if any(e is None for e in experts):
            raise UserError(f"{model_type}: every layer must be a MoE layer (mixed dense/MoE layers are not "
                            f"supported; check mlp_only_layers / decoder_sparse_step)")
        first = experts[0]
        return FFNAdapter(model_type, "moe", config.hidden_size, first.intermediate_dim, first.num_experts)
    layout = "fused" if model_type in _FUSED else "gated"
    return FFNAdapter(model_type, layout, config.hidden_size, config.intermediate_size, 1)
