"""Routed-experts FFN: 3D ``gate_up_proj[E, 2F, H]`` and ``down_proj[E, H, F]`` (Mixtral, Qwen2-MoE, transformers 5).

Neuron ``(expert, index)`` is flattened to ``expert * F + index``; the Qwen2-MoE shared expert is not part of the
neuron space. The FFN module is the experts module. Two forwards are patched per layer: the sparse-MoE block
(only to record tokens per row, since the experts see tokens flattened) and the experts, recomputed with the same
arithmetic as the eager loop when the layer is active. Scale and probe act on the flattened neuron space (an
unrouted expert reads as zero).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from model_patches.layouts.base import FFNLayout, LayerControl, decoder
from neurorit.errors import UserError


class MoEExpertsLayout(FFNLayout):
    """Neuron (e, i) owns rows i (gate) and F + i (up) of ``gate_up_proj[e]``, and column i of ``down_proj[e]``."""

    layout = "moe"
    ROLES = {"gate_up": (("gate", 0), ("up", 1)), "down": (("down", 0),)}
    STACKED_EXPERTS = True

    @classmethod
    def from_model(cls, model):
        model_type = model.config.model_type
        experts = [getattr(layer.mlp, "experts", None) for layer in decoder(model).layers]
        if any(e is None for e in experts):
            raise UserError(f"{model_type}: every layer must be a MoE layer (mixed dense/MoE layers are not "
                            f"supported; check mlp_only_layers / decoder_sparse_step)")
        first = experts[0]
        return cls(model_type, model.config.hidden_size, first.intermediate_dim, first.num_experts)

    def ffn_module(self, layer):
        return layer.mlp.experts

    def patches(self, ctl, layer):
        return [(self.ffn_module(layer), functools.partial(self.forward, ctl)),
                (layer.mlp, functools.partial(self.block_forward, ctl))]

    def weights(self, module):
        return {"gate_up": module.gate_up_proj, "down": module.down_proj}

    def before_deltas(self, model):
        """DeepSpeed ZeRO-3 runs each sparse-MoE block as a "leaf" whose gradients are reduced by a module
        backward hook; when the block's input needs no gradient (frozen layers below) that hook fires before the
        deltas' gradients exist. So the input embeddings are made to require grad (HF
        ``enable_input_require_grads``), which costs only the backward through the frozen bottom layers."""
        if not getattr(model, "_require_grads_hook", None):
            model.enable_input_require_grads()

    # ------------------------------------------------------------------------------------------ forward
    def block_forward(self, ctl: LayerControl, original, hidden_states: torch.Tensor, *args, **kwargs):
        """Patched sparse-MoE block: remember tokens per row, then run as usual."""
        ctl.cache["seq_len"] = hidden_states.shape[1] if hidden_states.dim() == 3 else 1
        return original(hidden_states, *args, **kwargs)

    def expert_groups(self, ctl: LayerControl, name: str, ids: torch.Tensor) -> dict:
        """``{expert: (positions of its neurons in ids, their index inside the expert)}``, cached per device."""
        key = (name, ids.device)
        if key not in ctl.cache:
            experts, local = self.split(ids.cpu())
            groups = {}
            for e in experts.unique().tolist():
                pos = (experts == e).nonzero().flatten()
                groups[e] = (pos.to(ids.device), local[pos].to(ids.device))
            ctl.cache[key] = groups
        return ctl.cache[key]

    def forward(self, ctl: LayerControl, original, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        if not ctl.active:
            return original(hidden_states, top_k_index, top_k_weights)
        mod = ctl.module
        num_experts = mod.num_experts
        with torch.no_grad():
            mask = F.one_hot(top_k_index, num_classes=num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist()
        idx = ctl.delta_index
        deltas = self.expert_groups(ctl, "deltas", idx) if idx is not None else {}
        dead = self.expert_groups(ctl, "dead", ctl.dead) if ctl.dead is not None else {}
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
        self._scale_and_probe(ctl, parts, hidden_states.shape[0])
        out = torch.zeros_like(hidden_states)
        if deltas:  # routing-weighted activations of the delta neurons, [tokens, n], for one delta_down product
            picked = hidden_states.new_zeros(hidden_states.shape[0], idx.numel())
        for e, top_k_pos, tokens, a in parts:
            weights = top_k_weights[tokens, top_k_pos, None]
            y = F.linear(a, mod.down_proj[e]) * weights
            out.index_add_(0, tokens, y.to(out.dtype))
            if e in deltas:
                sel, loc = deltas[e]
                picked = picked.index_put((tokens.unsqueeze(1), sel.unsqueeze(0)), a[:, loc] * weights,
                                          accumulate=True)
        if deltas:
            out = out + F.linear(picked, mod.neuron_delta_down).to(out.dtype)
        return out

    def _scale_and_probe(self, ctl: LayerControl, parts: list, num_tokens: int) -> None:
        """Scale / probe on the flattened neuron space ``expert * F + index``."""
        seq = max(ctl.cache.get("seq_len", 0), 1)
        if ctl.scale is not None:
            rows = ctl.scale[0]
            wanted = rows * seq + ctl.scale_index(seq)
            h = ctl.apply_scale(self._dense_rows(parts, wanted))
            width = self.expert_size
            for part in parts:
                e, tokens = part[0], part[2]
                j, k = (tokens.unsqueeze(0) == wanted.unsqueeze(1)).nonzero(as_tuple=True)
                part[3] = part[3].index_put((k,), h[j, e * width:(e + 1) * width])
        if ctl.probing:
            device = parts[0][2].device if parts else None
            positions = ctl.probe_positions(seq, device)
            starts = torch.arange(0, num_tokens, seq, device=device)
            wanted = (starts.unsqueeze(1) + positions.unsqueeze(0)).flatten()
            full = self._dense_rows([[e, p, t, a.detach()] for e, p, t, a in parts], wanted)
            ctl.record(full.view(starts.numel(), positions.numel(), -1))

    def _dense_rows(self, parts: list, wanted: torch.Tensor) -> torch.Tensor:
        """Activations of the ``wanted`` flat tokens over all experts, ``[len(wanted), E * F]`` (differentiable)."""
        width = self.expert_size
        dtype = parts[0][3].dtype if parts else torch.float32
        full = torch.zeros(wanted.numel(), self.intermediate_size, dtype=dtype, device=wanted.device)
        for e, _, tokens, a in parts:
            j, k = (tokens.unsqueeze(0) == wanted.unsqueeze(1)).nonzero(as_tuple=True)
            cols = torch.arange(e * width, (e + 1) * width, device=wanted.device)
            full = full.index_put((j.unsqueeze(1), cols.unsqueeze(0)), a[k])
        return full
