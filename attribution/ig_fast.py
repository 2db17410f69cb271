"""Fast exact integrated gradients over the cached prefix (docs/DESIGN.md §2, "the heart of the attribution speed").

Only the scaled position (the last prompt token) is scaled and attention is causal, so keys, values and hidden
states of every earlier position do not depend on the scaling. The input's *tail* is the scaled token and the
target's teacher-forced continuation after it (``reads`` tokens; one for a target read at the scaled position
only). One prefill of the tokens before the tail caches the prefix keys and values of every layer; one unscaled
pass of the tail over them gives the activations ``a`` and caches the tail's input hidden states at every layer.
Every (layer ``l``, step ``k``) pair is then one *row*: below ``l`` it equals the unscaled pass, so it starts at
layer ``l`` from the cached hidden states, runs ``l..L-1`` as a pass of the tail with its layer scaled at the
tail's first token, and is differentiated back to ``l``. A row costs about ``reads`` single-token rows.

Rows are processed in layer-major chunks of ``chunk_rows`` (``row_chunks``). A chunk is one *staircase* sweep of
the model: at layer ``j`` the batch holds the chunk's rows of layers ``<= j`` (rows of layer ``j`` join there), so
a layer below the chunk's first row is skipped, and every layer the chunk needs runs once for all its rows (under
ZeRO-3: gathered once per chunk). The chunk layout depends only on (layers, steps, chunk_rows), never on the
data, so every rank runs the same passes and gathers.

Attention of a row is computed against the shared prefix cache (one matrix product per layer for all rows, heads
and tail tokens; the prefix is never copied per row) plus the row's own tail keys and values, causally: a
registered attention implementation (``neurorit_rows``) used only inside these passes, which builds its own mask
(a single-token tail sees every key; sliding windows keep the last ``window - 1`` prefix keys and mask per tail
token; soft-capping is applied as in eager). Same numbers as ``ig_reference`` up to float rounding, for every
target.

Precision: in a bf16 model the row attention (scores, softmax, weighted values; prefix keys and values kept in
fp32) and the step interpolation ``a' + (k/m)(a - a')`` (``LayerControl.apply_scale``) run in fp32; the rest of
each layer runs in the model's dtype, so results depend on ``chunk_rows`` (the batch of a matrix product) only by
bf16 rounding (tests/test_bf16_ig.py bounds it).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from transformers.modeling_utils import AttentionInterface

from attribution.ig_common import (IGInput, IGResult, IGOptions, baseline_activations, finish, probe_scaled_position,
                                   model_device, rows_of, step_grid)
from model_patches.compat import cache_layers_kv, output_cache
from neurorit.errors import UserError

ATTN_NAME = "neurorit_rows"


class _RowState:
    """What the row passes share: the prefix keys / values per layer, the tail's input hidden states per layer,
    and (during a chunk) how many rows are active at each layer (``None``: the unscaled capture pass)."""

    def __init__(self):
        self.prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.entries: dict[int, torch.Tensor] = {}
        self.counts: Optional[list[int]] = None


_STATE: Optional[_RowState] = None


def _visible(prefix_len: int, kept: int, q_len: int, sliding_window, device) -> Optional[torch.Tensor]:
    """Which keys each of a row's ``q_len`` queries may see, ``[q_len, kept + q_len]`` (the ``kept`` last prefix keys,
    then the row's own): causal, and within ``sliding_window``; None when every key is visible (one query)."""
    if q_len == 1:
        return None
    keys = torch.cat([torch.arange(prefix_len - kept, prefix_len), torch.arange(prefix_len, prefix_len + q_len)])
    queries = torch.arange(prefix_len, prefix_len + q_len)[:, None]
    visible = keys[None] <= queries
    if sliding_window:
        visible &= keys[None] > queries - sliding_window
    return visible.to(device)


def rows_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                   sliding_window=None, softcap=None, **kwargs):
    """Attention of rows of ``q`` tokens, ``query [R, H, q, d]`` (own keys / values ``[R, Hkv, q, d]``), over the
    shared prefix of ``module.layer_idx`` and, causally, the row's own tokens; returns ``([R, q, H, d], None)`` like
    the eager implementation (the model's mask is not read: the row's own causal mask is built here)."""
    if _STATE is None:
        raise RuntimeError(f"attention implementation {ATTN_NAME!r} is only usable inside attribution.ig_fast")
    rows, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    if scaling is None:
        scaling = dim ** -0.5
    keys, values = _STATE.prefix.get(module.layer_idx, (None, None))
    prefix_len = 0 if keys is None else keys.shape[1]
    if keys is not None and sliding_window:  # the first row token sees keys at positions > P - window
        keys, values = keys[:, -(sliding_window - 1):], values[:, -(sliding_window - 1):]
    kept = 0 if keys is None else keys.shape[1]
    # [Hkv, R*G*q, d]: all rows, query heads and tokens of one KV head in one matrix product with the shared prefix
    # everything below in fp32 whatever the model's dtype: scores, softmax and the weighted sum of values (the
    # reference path's eager / sdpa attention does not round the scores to bf16 either); one cast back at the end
    q = query.float().reshape(rows, kv_heads, groups, q_len, dim).permute(1, 0, 2, 3, 4)  # [Hkv, R, G, q, d]
    k_self = key.float().reshape(rows, kv_heads, q_len, dim).permute(1, 0, 2, 3)  # [Hkv, R, q, d]
    v_self = value.float().reshape(rows, kv_heads, q_len, dim).permute(1, 0, 2, 3)
    # the row's own keys: [Hkv, R, G, q, q] (elementwise, as one token's dot product with itself was computed)
    s_self = (q.unsqueeze(4) * k_self[:, :, None, None]).sum(-1).reshape(kv_heads, rows * groups * q_len, q_len)
    q = q.reshape(kv_heads, rows * groups * q_len, dim)
    scores = s_self if not kept else torch.cat([torch.matmul(q, keys.transpose(1, 2)), s_self], dim=-1)
    scores = scores * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    visible = _visible(prefix_len, kept, q_len, sliding_window, scores.device)
    if visible is not None:
        scores = scores.view(kv_heads, rows * groups, q_len, -1).masked_fill(~visible, float("-inf")).view_as(scores)
    probs = torch.softmax(scores, dim=-1)
    # split, not two slices: its backward concatenates the two gradients instead of zero-filling twice
    p_prefix, p_self = probs.split([kept, q_len], dim=-1)
    p_self = p_self.reshape(kv_heads, rows, groups, q_len, q_len, 1)
    out = (p_self * v_self[:, :, None, None]).sum(-2).reshape(kv_heads, rows * groups * q_len, dim)
    if kept:
        out = out + torch.matmul(p_prefix, values)
    out = out.view(kv_heads, rows, groups, q_len, dim).permute(1, 3, 0, 2, 4).reshape(rows, q_len, heads, dim)
    return out.to(query.dtype), None


AttentionInterface.register(ATTN_NAME, rows_attention)


def _layer_forward(state: _RowState, j: int, original, hidden_states, *args, **kwargs):
    """Decoder layer ``j`` in row mode: record the input (capture pass) or run the chunk's active rows only."""
    if state.counts is None:
        state.entries[j] = hidden_states.detach()
        return original(hidden_states, *args, **kwargs)
    n, before = state.counts[j], (state.counts[j - 1] if j else 0)
    if n == 0:  # no row of this chunk has started: the layer is skipped (not gathered under ZeRO-3)
        return hidden_states
    x = state.entries[j].expand(n - before, -1, -1)
    if before:
        x = torch.cat([hidden_states[:before], x])
    return original(x, *args, **kwargs)


def _configs(model) -> list:
    seen = {}
    for module in [model] + list(model.modules()):
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen[id(cfg)] = cfg
    return list(seen.values())


@contextlib.contextmanager
def row_mode(model, patcher, state: _RowState):
    """Inside: attention is ``neurorit_rows`` over ``state.prefix`` and decoder layers follow ``state``."""
    global _STATE
    configs = _configs(model)
    saved_impl = [cfg._attn_implementation for cfg in configs]
    layers = patcher.layout.layers(model)
    restore = []
    try:
        for cfg in configs:
            cfg._attn_implementation = ATTN_NAME
        for j, layer in enumerate(layers):
            own = layer.__dict__.get("forward")
            restore.append((layer, own))
            original = layer.forward
            layer.forward = (lambda j, original: lambda *a, **k: _layer_forward(state, j, original, *a, **k))(
                j, original)
        _STATE = state
        yield state
    finally:
        _STATE = None
        for layer, own in restore:
            if own is None:
                del layer.__dict__["forward"]
            else:
                layer.forward = own
        for cfg, impl in zip(configs, saved_impl):
            cfg._attn_implementation = impl


def row_chunks(layers: int, steps: int, chunk_rows: int) -> list[list[tuple[int, int]]]:
    """All (layer, step) rows, layer-major, cut into chunks of at most ``chunk_rows``."""
    rows = [(layer, k) for layer in range(layers) for k in range(steps)]
    return [rows[i:i + chunk_rows] for i in range(0, len(rows), chunk_rows)]


def _prefix_kv(cache) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer: (keys [Hkv, P, d], values [Hkv, P, d])}`` from the prefill cache (batch 1), in fp32 (the row
    attention computes in fp32)."""
    if cache is None:  # the rows would silently attend to themselves only
        raise RuntimeError("the prefill returned no KV cache (use_cache=True); fast IG needs it")
    return {i: (keys[0].detach().float(), values[0].detach().float())
            for i, (keys, values) in enumerate(cache_layers_kv(cache))}


def fast_ig(model, patcher, inp: IGInput, options: IGOptions) -> IGResult:
    device = model_device(model)
    ids = inp.input_ids.view(1, -1).to(device)
    reads = inp.target.reads
    tail = ids[:, -reads:]  # the scaled position and the target's continuation: every row runs these tokens
    position = torch.arange(ids.shape[1] - reads, ids.shape[1], device=device).view(1, -1)
    state = _RowState()
    if ids.shape[1] > reads:
        with torch.no_grad():
            state.prefix = _prefix_kv(output_cache(model(input_ids=ids[:, :-reads], use_cache=True,
                                                         logits_to_keep=1)))
    base = None
    if inp.baseline_ids is not None:  # full passes in the model's own attention: before row mode
        base = baseline_activations(model, patcher, inp, torch.empty(0))
    alphas, weights = step_grid(options)
    with row_mode(model, patcher, state):
        acts, logits, _ = probe_scaled_position(model, patcher, tail, reads, position_ids=position, use_cache=False)
        f_input = float(inp.target.value(logits)[0])
        if base is None:
            base = torch.zeros_like(acts)
        layers, width = acts.shape
        grad_sums = torch.zeros(layers, width, dtype=torch.float64)
        f_base = torch.zeros(layers, dtype=torch.float64)
        for chunk in row_chunks(layers, options.steps, options.chunk_rows):
            by_layer: dict[int, list[tuple[int, int]]] = {}
            for row, (layer, k) in enumerate(chunk):
                by_layer.setdefault(layer, []).append((row, k))
            counts, n = [], 0
            for j in range(layers):
                n += len(by_layer.get(j, ()))
                counts.append(n)
            scale = {}
            for layer, items in by_layer.items():
                rows = torch.tensor([r for r, _ in items], device=device)
                ks = torch.tensor([k for _, k in items])
                scale[layer] = (rows, alphas[ks].to(device), rows_of(base[layer], len(items), device))
            state.counts = counts
            patcher.set_scale(scale, position=0)  # the row's first token: the scaled position
            try:
                out = model(input_ids=tail.expand(len(chunk), -1), position_ids=position, use_cache=False)
                f = inp.target.fused_value(out.logits.view(len(chunk), reads, -1))  # a view: no zero-filled grad
                grads = torch.autograd.grad(f.sum(), [patcher.scaled[layer] for layer in by_layer])
            finally:
                patcher.clear_scale()
                state.counts = None
            f = f.detach().double().cpu()
            for (layer, items), grad in zip(by_layer.items(), grads):
                ks = torch.tensor([k for _, k in items])
                grad_sums[layer] += (weights[ks, None] * grad.detach().double().cpu()).sum(0)
                for row, k in items:
                    if k == 0:
                        f_base[layer] = f[row]
    return IGResult(finish(acts.cpu(), base.cpu(), grad_sums, options.steps), f_input, f_base)
