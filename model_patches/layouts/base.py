"""The FFN layout contract, and the per-layer control state the patched forwards read.

A *layout* says where a family's FFN neurons live and how to compute with them. Neuron ``i`` of a layer is
component ``i`` of the input of the down projection (docs/DESIGN.md §2); for routed experts the neuron space is
flattened as ``expert * F + index``. A layout class owns, for its family:

- where the weights are: ``layers(model)``, ``ffn_module(layer)`` (the module that owns the FFN weights; patches
  and neuron deltas live on it, so ZeRO-3 gathers them together), ``from_model(model)`` (sizes, checks);
- its forward: ``patches(ctl, layer)`` -> ``[(module, patched_forward)]``, each called as
  ``patched_forward(original_forward, *args)``, reading ``ctl`` (probe / scale / deactivate / neuron deltas);
- its weight roles: ``weights(ffn_module)`` -> ``{role: tensor}`` and ``ROLES`` -> which rows / columns of that
  tensor neuron ``i`` owns; the default ``fold`` merges deltas and deactivations with them at export.

Everything here is off until switched on: a layout's forward must call ``original`` when ``ctl.active`` is false,
so an idle patch is bitwise invisible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch

from neurorit.errors import UserError

DELTA_NAMES = ("neuron_delta_gate", "neuron_delta_up", "neuron_delta_down")
DELTA_INDEX = "neuron_delta_index"
Patched = Callable[..., torch.Tensor]


class LayerControl:
    """What one layer's patched forward must do; created and switched by the ``FFNPatcher``.

    ``patcher`` needs only the public ``probe_wants(layer)``, ``probe_positions(seq_len, device)``,
    ``record_probe(layer, acts)`` and the ``scaled`` dict. ``cache`` is the layout's per-layer scratch space:
    entries keyed ``(name, ...)`` are dropped by ``forget(name)`` when the patcher changes that neuron set.
    """

    def __init__(self, patcher, layer: int, module: torch.nn.Module):
        self.patcher = patcher
        self.layer = layer
        self.module = module
        self.dead: Optional[torch.Tensor] = None  # flat neuron ids
        self.scale: Optional[tuple] = None  # (rows, alphas, baseline)
        self.cache: dict = {}

    @property
    def delta_index(self) -> Optional[torch.Tensor]:
        """Flat ids of the neurons with deltas on this layer, or None."""
        return getattr(self.module, DELTA_INDEX, None)

    @property
    def has_deltas(self) -> bool:
        return hasattr(self.module, DELTA_INDEX)

    @property
    def probing(self) -> bool:
        return self.patcher.probe_wants(self.layer)

    @property
    def active(self) -> bool:
        return self.has_deltas or self.dead is not None or self.scale is not None or self.probing

    def probe_positions(self, seq_len: int, device) -> torch.Tensor:
        return self.patcher.probe_positions(seq_len, device)

    def record(self, acts: torch.Tensor) -> None:
        """``acts``: ``[batch, positions, d_ff]``, already restricted to ``probe_positions``."""
        self.patcher.record_probe(self.layer, acts)

    def scale_index(self, seq_len: int) -> int:
        """The position ``set_scale`` scales, in a sequence of ``seq_len`` tokens."""
        return self.patcher.scale_position % seq_len

    def apply_scale(self, current: torch.Tensor) -> torch.Tensor:
        """``h = baseline + alpha * (a - baseline)`` for the scaled rows, computed in fp32 whatever the model's
        dtype (the step fractions ``k/m`` and the interpolation are not rounded to bf16); the fp32 ``h`` is
        published to ``patcher.scaled`` (gradients are taken with respect to it), ``h`` in ``current``'s dtype
        returned for the forward."""
        _, alphas, baseline = self.scale
        base = baseline.float()
        h = base + alphas.float().unsqueeze(-1) * (current.float() - base)
        self.patcher.scaled[self.layer] = h
        return h.to(current.dtype)

    def forget(self, name: str) -> None:
        self.cache = {k: v for k, v in self.cache.items() if not (isinstance(k, tuple) and k[0] == name)}


@dataclass(frozen=True)
class FFNLayout:
    """Where one model's FFN neurons live, and how its patched FFN computes. Subclass per layout."""

    layout: ClassVar[str] = ""  # short name: "gated", "fused", "moe", ...
    # role -> what neuron i owns in that weight: ("gate" | "up", k) = row k * F + i (delta rows),
    # ("down", 0) = column i (delta column; deactivation zeroes it). F = expert_size.
    ROLES: ClassVar[dict[str, tuple[tuple[str, int], ...]]] = {}
    STACKED_EXPERTS: ClassVar[bool] = False  # weights carry a leading expert dimension

    model_type: str
    hidden_size: int
    expert_size: int  # F: width of one FFN (one expert for MoE)
    num_experts: int  # 1 for dense layouts

    # ------------------------------------------------------------------------------------- structure
    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "FFNLayout":
        """The layout of ``model`` (dense default: ``config.intermediate_size`` neurons, one expert)."""
        config = model.config
        return cls(config.model_type, config.hidden_size, config.intermediate_size, 1)

    @property
    def intermediate_size(self) -> int:
        """Size of the (flattened) neuron space of one layer."""
        return self.expert_size * self.num_experts

    def layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The decoder layers, in order."""
        return list(decoder(model).layers)

    def ffn_module(self, layer: torch.nn.Module) -> torch.nn.Module:
        """The module that owns this layer's FFN weights."""
        return layer.mlp

    def ffn_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [self.ffn_module(layer) for layer in self.layers(model)]

    def split(self, neurons: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat neuron ids -> (expert ids, index inside the expert)."""
        return torch.div(neurons, self.expert_size, rounding_mode="floor"), neurons % self.expert_size

    # --------------------------------------------------------------------------------------- forward
    def patches(self, ctl: LayerControl, layer: torch.nn.Module) -> list[tuple[torch.nn.Module, Patched]]:
        """``[(module, patched_forward)]`` to install for this layer, in order."""
        raise NotImplementedError

    def delta_shapes(self, n: int) -> tuple[tuple[int, int], ...]:
        """Shapes of the ``DELTA_NAMES`` parameters for ``n`` neurons: gate row, up row, down column."""
        return (n, self.hidden_size), (n, self.hidden_size), (self.hidden_size, n)

    def before_deltas(self, model: torch.nn.Module) -> None:
        """Called once by ``add_neuron_deltas`` before any delta is registered (default: nothing)."""

    # ------------------------------------------------------------------------------- weights, export
    def weights(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``{role: weight}`` of one FFN module, roles as in ``ROLES``."""
        raise NotImplementedError

    def fold(self, role: str, weight: torch.Tensor, deltas: Optional[tuple],
             dead: Optional[torch.Tensor]) -> torch.Tensor:
        """A folded copy of one FFN weight: ``deltas`` = ``(ids, d_gate, d_up, d_down)`` added into the rows /
        columns the neurons own, ``dead`` neurons' down columns zeroed (full, gathered tensors in; new out)."""
        w = weight.detach().clone()
        width = self.expert_size
        owned = self.ROLES[role]
        if deltas is not None:
            ids, d_gate, d_up, d_down = (t.detach().to(w.device, w.dtype) if t.is_floating_point()
                                         else t.to(w.device) for t in deltas)
            experts, local = self.split(ids)
            lead = (experts,) if self.STACKED_EXPERTS else ()
            for kind, block in owned:
                if kind == "down":
                    w.transpose(-1, -2).index_put_(lead + (local,), d_down.t(), accumulate=True)
                else:
                    rows = local + block * width if block else local
                    w.index_put_(lead + (rows,), d_gate if kind == "gate" else d_up, accumulate=True)
        if dead is not None and ("down", 0) in owned:
            experts, local = self.split(dead.to(w.device))
            w.transpose(-1, -2).index_put_(((experts,) if self.STACKED_EXPERTS else ()) + (local,), w.new_zeros(()))
        return w


def decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The module holding ``layers`` (``model.model`` for a causal LM)."""
    inner = getattr(model, "model", model)
    if not hasattr(inner, "layers"):
        raise UserError(f"{type(model).__name__}: no decoder layers found (expected model.model.layers)")
    return inner
