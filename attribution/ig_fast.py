"""Fast exact integrated gradients over the KV cache (DESIGN.md §2, "the heart of the attribution speed").

Only the last position is scaled and attention is causal, so keys, values and hidden states of every earlier
position do not depend on the scaling. One prefill of the first ``T-1`` tokens builds the KV cache; every
(layer, step) pair then becomes one *row*: the last token, run as a single-token pass over the cache with that
row's layer scaled. Rows are processed in chunks of ``chunk_rows`` (the cache is expanded to the chunk's rows),
each chunk one sweep over the layers plus one backward for ``dF/dh``, so under ZeRO-3 every layer is gathered
once per chunk. The chunk layout depends only on (layers, steps, chunk_rows): every rank runs the same passes.
Same numbers as ``ig_reference`` at roughly the cost of one forward pass.
"""
from __future__ import annotations

import copy

import torch

from attribution.ig_common import (IGInput, IGResult, IGSettings, baseline_activations, finish, last_position,
                                   model_device, rows_of, step_grid)


def _expanded(cache, rows: int):
    """A fresh cache holding ``cache``'s states broadcast to ``rows`` rows (the original is left untouched)."""
    if cache is None:
        return None
    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        dup = copy.copy(layer)
        if getattr(layer, "is_initialized", False):
            dup.keys = layer.keys.expand(rows, *layer.keys.shape[1:])
            dup.values = layer.values.expand(rows, *layer.values.shape[1:])
        new.layers.append(dup)
    return new


def row_chunks(layers: int, steps: int, chunk_rows: int) -> list[list[tuple[int, int]]]:
    """All (layer, step) rows, layer-major, cut into chunks of at most ``chunk_rows``."""
    rows = [(layer, k) for layer in range(layers) for k in range(steps)]
    return [rows[i:i + chunk_rows] for i in range(0, len(rows), chunk_rows)]


def fast_ig(model, patcher, inp: IGInput, settings: IGSettings) -> IGResult:
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    ids = inp.input_ids.view(1, -1).to(device)
    last = ids[:, -1:]
    with torch.no_grad():
        prefix = model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1).cache if ids.shape[1] > 1 else None
    acts, logits, _ = last_position(model, patcher, last, cache=_expanded(prefix, 1), use_cache=True)
    f_input = float(inp.target.value(logits)[0])
    base = baseline_activations(model, patcher, inp, acts)
    alphas, weights = step_grid(settings)
    layers, width = acts.shape
    grad_sums = torch.zeros(layers, width, dtype=torch.float64)
    f_base = torch.zeros(layers, dtype=torch.float64)
    for chunk in row_chunks(layers, settings.steps, settings.chunk_rows):
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for row, (layer, k) in enumerate(chunk):
            by_layer.setdefault(layer, []).append((row, k))
        scale = {}
        for layer, items in by_layer.items():
            rows = torch.tensor([r for r, _ in items], device=device)
            ks = torch.tensor([k for _, k in items])
            scale[layer] = (rows, alphas[ks].to(device, dtype), rows_of(base[layer], len(items), device, dtype))
        patcher.set_scale(scale)
        try:
            out = model(input_ids=last.expand(len(chunk), 1), cache=_expanded(prefix, len(chunk)), use_cache=True)
            f = inp.target.value(out.logits[:, -1])
            grads = torch.autograd.grad(f.sum(), [patcher.scaled[layer] for layer in by_layer])
        finally:
            patcher.clear_scale()
        f = f.detach().double().cpu()
        for (layer, items), grad in zip(by_layer.items(), grads):
            ks = torch.tensor([k for _, k in items])
            grad_sums[layer] += (weights[ks, None] * grad.detach().double().cpu()).sum(0)
            for row, k in items:
                if k == 0:
                    f_base[layer] = f[row]
    return IGResult(finish(acts.cpu(), base.cpu(), grad_sums, settings.steps), f_input, f_base)
