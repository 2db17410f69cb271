"""Fused gate-up FFN (Phi-3): one ``gate_up_proj`` Linear whose first half of rows is the gate, then ``down_proj``.

Same patched forward as the gated layout; only the projections and the weight roles differ.
"""
from __future__ import annotations

import torch.nn.functional as F

from model_patches.layouts.gated import GatedLayout


class FusedGateUpLayout(GatedLayout):
    """Neuron i owns rows i (gate) and F + i (up) of ``gate_up_proj``, and column i of ``down_proj``."""

    layout = "fused"
    ROLES = {"gate_up": (("gate", 0), ("up", 1)), "down": (("down", 0),)}

    def weights(self, module):
        return {"gate_up": module.gate_up_proj.weight, "down": module.down_proj.weight}

    def projections(self, mod, x, idx):
        gate_up = mod.gate_up_proj(x)
        if idx is not None:
            gate_up.index_add_(-1, idx, F.linear(x, mod.neuron_delta_gate))
            gate_up.index_add_(-1, idx + self.expert_size, F.linear(x, mod.neuron_delta_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return gate, up, mod.activation_fn
