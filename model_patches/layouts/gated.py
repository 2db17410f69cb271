"""Gated FFN: separate ``gate_proj`` / ``up_proj`` / ``down_proj`` Linear modules (Llama, Mistral, Qwen2/3, Gemma).

When the layer is active the patched forward recomputes the MLP itself:

    gate, up = projections(x)    (+ neuron deltas scattered into the selected rows)
    a = act(gate) * up           -> deactivate -> scale at the scaled position -> probe
    out = down(a)                (+ a[:, selected] @ delta_down^T)

No full weight is read outside the module's own forward, so ZeRO-3 gathers everything it needs there.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from model_patches.layouts.base import FFNLayout, LayerControl


class GatedLayout(FFNLayout):
    """``act(gate_proj(x)) * up_proj(x)`` into ``down_proj``; neuron i owns gate row i, up row i, down column i."""

    layout = "gated"
    ROLES = {"gate": (("gate", 0),), "up": (("up", 0),), "down": (("down", 0),)}

    def patches(self, ctl, layer):
        return [(self.ffn_module(layer), functools.partial(self.forward, ctl))]

    def weights(self, module):
        return {"gate": module.gate_proj.weight, "up": module.up_proj.weight, "down": module.down_proj.weight}

    def projections(self, mod: torch.nn.Module, x: torch.Tensor, idx: Optional[torch.Tensor]):
        """``(gate, up, act)`` with the neuron deltas added into the selected rows (in place on fresh outputs)."""
        gate, up = mod.gate_proj(x), mod.up_proj(x)
        if idx is not None:
            gate.index_add_(-1, idx, F.linear(x, mod.neuron_delta_gate))
            up.index_add_(-1, idx, F.linear(x, mod.neuron_delta_up))
        return gate, up, mod.act_fn

    def forward(self, ctl: LayerControl, original, x: torch.Tensor) -> torch.Tensor:
        if not ctl.active:
            return original(x)
        mod = ctl.module
        idx = ctl.delta_index
        # In-place edits touch only fresh outputs that autograd did not save (Linear saves its input, the
        # activation its input, the product its factors), so they are safe and spare full-size copies.
        gate, up, act = self.projections(mod, x, idx)
        a = act(gate) * up
        if ctl.dead is not None:
            a.index_fill_(-1, ctl.dead, 0.0)
        if ctl.scale is not None:
            rows, last = ctl.scale[0], ctl.scale_index(a.shape[-2])
            h = ctl.apply_scale(a[rows, last])
            a = a.index_put((rows, torch.full_like(rows, last)), h)
        if ctl.probing:
            positions = ctl.probe_positions(a.shape[-2], a.device)
            ctl.record(a.detach().index_select(-2, positions))
        out = mod.down_proj(a)
        if idx is not None:
            out += F.linear(a.index_select(-1, idx), mod.neuron_delta_down)
        return out
