"""Reference integrated gradients: the obviously-correct, slow algorithm the fast path is tested against.

For each layer, the full input is repeated once per step (in chunks of ``chunk_rows`` steps), the activation of
that layer at the scaled position (the last prompt token) is scaled from the baseline towards its value, the target
reads its positions (the scaled one, and after it any teacher-forced continuation), and the gradient of the target
with respect to the scaled activation is taken. Cost: ``layers x steps`` full-sequence passes. Works for every
target, also those read at several positions.
"""
from __future__ import annotations

import torch

from attribution.ig_common import (IGInput, IGResult, IGOptions, baseline_activations, finish, probe_scaled_position,
                                   model_device, rows_of, step_grid)


def reference_ig(model, patcher, inp: IGInput, options: IGOptions) -> IGResult:
    device = model_device(model)
    ids = inp.input_ids.view(1, -1).to(device)
    reads = inp.target.reads
    acts, logits, _ = probe_scaled_position(model, patcher, ids, reads, use_cache=False)
    f_input = float(inp.target.value(logits)[0])
    base = baseline_activations(model, patcher, inp, acts)
    alphas, weights = step_grid(options)
    layers, width = acts.shape
    grad_sums = torch.zeros(layers, width, dtype=torch.float64)
    f_base = torch.zeros(layers, dtype=torch.float64)
    for layer in range(layers):
        for start in range(0, options.steps, options.chunk_rows):
            ks = torch.arange(start, min(options.steps, start + options.chunk_rows))
            rows = len(ks)
            patcher.set_scale({layer: (torch.arange(rows, device=device), alphas[ks].to(device),
                                       rows_of(base[layer], rows, device))},  # fp32, as the fast path
                              position=inp.scaled_position)
            try:
                out = model(input_ids=ids.expand(rows, -1), use_cache=False, logits_to_keep=reads)
                f = inp.target.value(out.logits[:, -reads:])
                (grad,) = torch.autograd.grad(f.sum(), [patcher.scaled[layer]])
            finally:
                patcher.clear_scale()
            grad_sums[layer] += (weights[ks, None] * grad.detach().double().cpu()).sum(0)
            if start == 0:
                f_base[layer] = float(f[0].detach())
    return IGResult(finish(acts.cpu(), base.cpu(), grad_sums, options.steps), f_input, f_base)
