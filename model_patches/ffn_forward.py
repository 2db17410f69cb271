"""The patched FFN forwards (dense and MoE experts) and the per-layer control they read.

Each patched module gets a ``LayerControl``. When nothing is switched on for the layer the patched forward calls
the module's original forward, so an idle patch is bitwise invisible. Otherwise it recomputes the FFN itself:

    gate, up = projections(x)    (+ neuron deltas scattered into the selected rows)
    a = act(gate) * up           -> deactivate -> scale at the last position -> probe
    out = down(a)                (+ a[:, selected] @ delta_down^T)

No full weight is read outside the module's own forward, so ZeRO-3 gathers everything it needs there.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

DELTA_NAMES = ("neuron_delta_gate", "neuron_delta_up", "neuron_delta_down")
DELTA_INDEX = "neuron_delta_index"


class LayerControl:
    """What one layer's patched forward must do; owned by the ``FFNPatcher``."""

    def __init__(self, patcher, layer: int, module: torch.nn.Module):
        self.patcher = patcher
        self.layer = layer
        self.module = module
        self.dead: Optional[torch.Tensor] = None  # flat neuron ids
        self.scale: Optional[tuple] = None  # (rows, alphas, baseline)
        self.seq_len = 0  # MoE only: tokens per row, recorded by the patched MoE block
        self._expert_groups: dict = {}  # (name, device) -> {expert: (positions in the id list, local index)}

    @property
    def has_deltas(self) -> bool:
        return hasattr(self.module, DELTA_INDEX)

    @property
    def probing(self) -> bool:
        return self.patcher._probe_wants(self.layer)

    @property
    def active(self) -> bool:
        return self.has_deltas or self.dead is not None or self.scale is not None or self.probing

    def expert_groups(self, name: str, ids: torch.Tensor) -> dict:
        """``{expert: (positions of its neurons in ids, their index inside the expert)}``, cached per device."""
        key = (name, ids.device)
        if key not in self._expert_groups:
            experts, local = self.patcher.adapter.split(ids.cpu())
            groups = {}
            for e in experts.unique().tolist():
                pos = (experts == e).nonzero().flatten()
                groups[e] = (pos.to(ids.device), local[pos].to(ids.device))
            self._expert_groups[key] = groups
        return self._expert_groups[key]

    def forget_groups(self, name: str) -> None:
        self._expert_groups = {k: v for k, v in self._expert_groups.items() if k[0] != name}


# ------------------------------------------------------------------------------------------------ dense
def dense_forward(ctl: LayerControl, fused: bool, original, x: torch.Tensor) -> torch.Tensor:
    """Patched forward of a gated (or Phi-3 fused) MLP."""
    if not ctl.active:
        return original(x)
    mod = ctl.module
    idx = getattr(mod, DELTA_INDEX, None)
    # In-place edits below touch only fresh outputs that autograd did not save (Linear saves its input, the
    # activation its input, the product its factors), so they are safe and spare full-size copies.
    if fused:
        gate_up = mod.gate_up_proj(x)
        if idx is not None:
            gate_up.index_add_(-1, idx, F.linear(x, mod.neuron_delta_gate))
            gate_up.index_add_(-1, idx + ctl.patcher.adapter.expert_size, F.linear(x, mod.neuron_delta_up))
        gate, up = gate_up.chunk(2, dim=-1)
        act = mod.activation_fn
    else:
        gate, up = mod.gate_proj(x), mod.up_proj(x)
        if idx is not None:
            gate.index_add_(-1, idx, F.linear(x, mod.neuron_delta_gate))
            up.index_add_(-1, idx, F.linear(x, mod.neuron_delta_up))
        act = mod.act_fn
    a = act(gate) * up
    if ctl.dead is not None:
        a.index_fill_(-1, ctl.dead, 0.0)
    if ctl.scale is not None:
        rows, last = ctl.scale[0], a.shape[-2] - 1
        h = _scaled(ctl, a[rows, last])
        a = a.index_put((rows, torch.full_like(rows, last)), h)
    if ctl.probing:
        positions = ctl.patcher._probe_positions(a.shape[-2], a.device)
        ctl.patcher._record(ctl.layer, a.detach().index_select(-2, positions))
    out = mod.down_proj(a)
    if idx is not None:
        out += F.linear(a.index_select(-1, idx), mod.neuron_delta_down)
    return out


def _scaled(ctl: LayerControl, current: torch.Tensor) -> torch.Tensor:
    """``h = baseline + alpha * (a - baseline)`` for the scaled rows; published to ``patcher.scaled``."""
    _, alphas, baseline = ctl.scale
    h = baseline + alphas.unsqueeze(-1) * (current - baseline)
    ctl.patcher.scaled[ctl.layer] = h
    return h


# -------------------------------------------------------------------------------------------------- MoE
def moe_block_forward(ctl: LayerControl, original, hidden_states: torch.Tensor, *args, **kwargs):
    """Patched sparse-MoE block: remember tokens per row (experts see them flattened), then run as usual."""
    ctl.seq_len = hidden_states.shape[1] if hidden_states.dim() == 3 else 1
    return original(hidden_states, *args, **kwargs)


def moe_experts_forward(ctl: LayerControl, original, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                        top_k_weights: torch.Tensor) -> torch.Tensor:
    """Patched routed experts (3D ``gate_up_proj`` / ``down_proj``), same arithmetic as the eager loop."""
    if not ctl.active:
        return original(hidden_states, top_k_index, top_k_weights)
    mod = ctl.module
    num_experts = mod.num_experts
    with torch.no_grad():
        mask = F.one_hot(top_k_index, num_classes=num_experts + 1).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist()
    idx = getattr(mod, DELTA_INDEX, None)
    deltas = ctl.expert_groups("deltas", idx) if idx is not None else {}
    dead = ctl.expert_groups("dead", ctl.dead) if ctl.dead is not None else {}
    if deltas:  # each delta is used once, whole (as in the dense forward), then sliced per expert
        extra_gate = F.linear(hidden_states, mod.neuron_delta_gate)
        extra_up = F.linear(hidden_states, mod.neuron_delta_up)
    parts = []
    for e in hit:
        if e == num_experts:
            continue
        top_k_pos, tokens = torch.where(mask[e])
        x = hidden_states[tokens]
        gate, up = F.linear(x, mod.gate_up_proj[e]).chunk(2, dim=-1)
        if e in deltas:
            sel, loc = deltas[e]
            gate = gate.index_add(-1, loc, extra_gate[tokens][:, sel])
            up = up.index_add(-1, loc, extra_up[tokens][:, sel])
        a = mod.act_fn(gate) * up
        if e in dead:
            a = a.index_fill(-1, dead[e][1], 0.0)
        parts.append([e, top_k_pos, tokens, a])
    _moe_scale_and_probe(ctl, parts, hidden_states.shape[0])
    out = torch.zeros_like(hidden_states)
    if deltas:  # routing-weighted activations of the delta neurons, [tokens, n], for one delta_down product
        picked = hidden_states.new_zeros(hidden_states.shape[0], idx.numel())
    for e, top_k_pos, tokens, a in parts:
        weights = top_k_weights[tokens, top_k_pos, None]
        y = F.linear(a, mod.down_proj[e]) * weights
        out.index_add_(0, tokens, y.to(out.dtype))
        if e in deltas:
            sel, loc = deltas[e]
            picked = picked.index_put((tokens.unsqueeze(1), sel.unsqueeze(0)), a[:, loc] * weights, accumulate=True)
    if deltas:
        out = out + F.linear(picked, mod.neuron_delta_down).to(out.dtype)
    return out


def _moe_scale_and_probe(ctl: LayerControl, parts: list, num_tokens: int) -> None:
    """Scale / probe on the flattened neuron space ``expert * F + index`` (unrouted experts read as zero)."""
    seq = max(ctl.seq_len, 1)
    if ctl.scale is not None:
        rows = ctl.scale[0]
        wanted = rows * seq + (seq - 1)
        h = _scaled(ctl, _dense_rows(ctl, parts, wanted))
        width = ctl.patcher.adapter.expert_size
        for part in parts:
            e, tokens = part[0], part[2]
            j, k = (tokens.unsqueeze(0) == wanted.unsqueeze(1)).nonzero(as_tuple=True)
            part[3] = part[3].index_put((k,), h[j, e * width:(e + 1) * width])
    if ctl.probing:
        device = parts[0][2].device if parts else None
        positions = ctl.patcher._probe_positions(seq, device)
        starts = torch.arange(0, num_tokens, seq, device=device)
        wanted = (starts.unsqueeze(1) + positions.unsqueeze(0)).flatten()
        full = _dense_rows(ctl, [[e, p, t, a.detach()] for e, p, t, a in parts], wanted)
        ctl.patcher._record(ctl.layer, full.view(starts.numel(), positions.numel(), -1))


def _dense_rows(ctl: LayerControl, parts: list, wanted: torch.Tensor) -> torch.Tensor:
    """Activations of the ``wanted`` flat tokens over all experts, ``[len(wanted), E * F]`` (differentiable)."""
    width = ctl.patcher.adapter.expert_size
    dtype = parts[0][3].dtype if parts else torch.float32
    full = torch.zeros(wanted.numel(), ctl.patcher.adapter.intermediate_size, dtype=dtype, device=wanted.device)
    for e, _, tokens, a in parts:
        j, k = (tokens.unsqueeze(0) == wanted.unsqueeze(1)).nonzero(as_tuple=True)
        cols = torch.arange(e * width, (e + 1) * width, device=wanted.device)
        full = full.index_put((j.unsqueeze(1), cols.unsqueeze(0)), a[k])
    return full
