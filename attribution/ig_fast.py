"""Fast exact integrated gradients over the KV cache (DESIGN.md §2, "the heart of the attribution speed").

Only the last position is scaled and attention is causal, so keys, values and hidden states of every earlier
position do not depend on the scaling. One prefill of the first ``T-1`` tokens builds the KV cache; every
(layer, step) pair then becomes one *row*: the last token, run as a single-token pass over the cache with that
row's layer scaled. Rows are processed in chunks of ``chunk_rows`` (the prefix is copied once into a per-row
buffer whose last slot each pass fills in place), each chunk one sweep over the layers plus one backward for
``dF/dh``, so under ZeRO-3 every layer is gathered once per chunk. The chunk layout depends only on (layers, steps, chunk_rows): every rank runs the same passes.
Same numbers as ``ig_reference`` at roughly the cost of one forward pass.
"""
from __future__ import annotations

import copy

import torch
from transformers.cache_utils import DynamicLayer

from attribution.ig_common import (IGInput, IGResult, IGSettings, baseline_activations, finish, last_position,
                                   model_device, rows_of, step_grid)


class _WriteLastSlot(torch.autograd.Function):
    """``buffer[:, :, -1:] = new`` in place, differentiable in ``new`` only: the gradient of the returned buffer
    is sliced back to the slot, so the per-row prefix copy is neither rebuilt nor cloned per pass."""

    @staticmethod
    def forward(ctx, buffer: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        buffer[:, :, -1:] = new
        ctx.mark_dirty(buffer)
        return buffer

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad[:, :, -1:]


class _RowLayer(DynamicLayer):
    """One layer's cache for up to ``rows`` rows: the prefix is copied once into a buffer with one free slot per
    row, and each pass writes its last-token key/value into that slot in place (no per-chunk copy of the
    prefix). Lengths and mask sizes are those of the prefill layer, so positions and masks (sliding windows
    included) are exactly what a real next-token step would see."""

    def __init__(self, source, rows: int):
        super().__init__()
        self.source = source
        self.device = source.keys.device
        self.buffers = []
        for prefix in (source.keys, source.values):
            buf = prefix.new_empty(rows, prefix.shape[1], prefix.shape[2] + 1, prefix.shape[3])
            buf[:, :, :-1] = prefix
            self.buffers.append(buf)
        self.is_initialized = True

    def use_rows(self, rows: int) -> None:
        """Start a pass over ``rows`` rows (the previous pass's graph is done with the buffers)."""
        self.keys, self.values = (buf[:rows].detach() for buf in self.buffers)

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys = _WriteLastSlot.apply(self.keys, key_states)
        self.values = _WriteLastSlot.apply(self.values, value_states)
        return self.keys, self.values

    @property
    def is_sliding(self) -> bool:
        return self.source.is_sliding

    def get_seq_length(self) -> int:
        return self.source.get_seq_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.source.get_mask_sizes(query_length)


class RowCache:
    """The prefill cache broadcast to the rows of a chunk; ``for_rows(n)`` gives the cache for one pass."""

    def __init__(self, prefix, rows: int):
        self.prefix = prefix
        if prefix is not None:
            self.layers = [_RowLayer(layer, rows) for layer in prefix.layers]

    def for_rows(self, rows: int):
        if self.prefix is None:
            return None
        cache = copy.copy(self.prefix)
        for layer in self.layers:
            layer.use_rows(rows)
        cache.layers = list(self.layers)
        return cache


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
    acts, logits, _ = last_position(model, patcher, last, cache=RowCache(prefix, 1).for_rows(1), use_cache=True)
    f_input = float(inp.target.value(logits)[0])
    base = baseline_activations(model, patcher, inp, acts)
    alphas, weights = step_grid(settings)
    layers, width = acts.shape
    grad_sums = torch.zeros(layers, width, dtype=torch.float64)
    f_base = torch.zeros(layers, dtype=torch.float64)
    chunks = row_chunks(layers, settings.steps, settings.chunk_rows)
    rows_cache = RowCache(prefix, len(chunks[0]))
    for chunk in chunks:
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
            out = model(input_ids=last.expand(len(chunk), 1), cache=rows_cache.for_rows(len(chunk)),
                        use_cache=True)
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
