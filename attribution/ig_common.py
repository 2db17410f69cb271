"""What the two integrated-gradients paths share: options, inputs, results, the step grid, and the baseline.

IG at layer ``l``, at the scaled position only (docs/DESIGN.md §2)::

    attr_i = (a_i - a'_i) / m * sum_{k=0}^{m-1} w_k * dF/dh_i  at  h = a' + (k/m)(a - a')

with ``w_k = 1`` (``standard``, the left Riemann sum) or ``w_k = k/m`` (``ircan``, the release's variant that
differentiates with respect to the end point). ``a`` is the activation on the prompt, ``a'`` the activation at
the last position of the query-only prompt (``query`` baseline) or zero (``zero`` baseline). The scaled position
is the last prompt token; the target (``attribution/targets.py``) reads it and, when teacher-forced, the positions
of its continuation tokens after it (``IGInput.scaled_position`` / ``read_positions``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from attribution.targets import Target

IG_RULES = ("standard", "ircan")


@dataclass(frozen=True)
class IGOptions:
    steps: int = 20
    ig_rule: str = "standard"
    chunk_rows: int = 64  # rows (layer, step) per pass: bounds memory; changes the result only by float rounding

    def __post_init__(self):
        if self.ig_rule not in IG_RULES:
            raise ValueError(f"unknown ig_rule {self.ig_rule!r}; use one of {', '.join(IG_RULES)}")
        if self.steps < 1 or self.chunk_rows < 1:
            raise ValueError("steps and chunk_rows must be >= 1")


@dataclass
class IGInput:
    """One prompt to attribute: token ids ``[T]`` (the prompt, then the target's continuation tokens), the
    baseline prompt ids (None = zero baseline), the target."""

    input_ids: torch.Tensor
    baseline_ids: Optional[torch.Tensor]
    target: Target

    @property
    def scaled_position(self) -> int:
        """The position whose activation IG scales: the last prompt token."""
        return len(self.input_ids) - self.target.reads

    @property
    def read_positions(self) -> range:
        """The positions whose logits the target reads: the scaled one and every continuation token's."""
        return range(self.scaled_position, len(self.input_ids))


@dataclass
class IGResult:
    attributions: torch.Tensor  # [layers, d_ff] float64
    f_input: float  # F on the prompt, nothing scaled
    f_baseline: torch.Tensor  # [layers]: F with layer l's last-position activation set to the baseline

    def completeness_gap(self) -> torch.Tensor:
        """Per layer: sum of attributions minus (F(a) - F(a')); tends to 0 as steps grow (standard rule)."""
        return self.attributions.sum(dim=1) - (self.f_input - self.f_baseline)


def step_grid(options: IGOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(alphas ``k/m``, weights ``w_k``) for k = 0..m-1, fp32 and fp64 (pass the alphas on in fp32, not in the
    model's dtype: in bf16, 1/20 is 0.0500488)."""
    k = torch.arange(options.steps, dtype=torch.float64)
    alphas = k / options.steps
    weights = torch.ones_like(alphas) if options.ig_rule == "standard" else alphas.clone()
    return alphas.float(), weights


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def probe_scaled_position(model, patcher, ids: torch.Tensor, reads: int = 1,
                  **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Probe every layer at the scaled position (the ``reads``-th from the end; the last by default):
    (activations ``[layers, d_ff]`` fp32, logits at the ``reads`` last positions ``[1, reads, V]``, the output)."""
    spec = "last" if reads == 1 else [ids.shape[-1] - reads]
    with patcher.probe(layers=None, positions=spec) as store:
        out = model(input_ids=ids, logits_to_keep=reads, **forward_kwargs)
    acts = torch.stack([(store[layer][0] if reads == 1 else store[layer][0, 0]).float()
                        for layer in range(patcher.num_layers)])
    return acts, out.logits[:, -reads:], out


def baseline_activations(model, patcher, inp: IGInput, like: torch.Tensor) -> torch.Tensor:
    """``a'`` for every layer: the query-only prompt's last-position activations, or zeros."""
    if inp.baseline_ids is None:
        return torch.zeros_like(like)
    ids = inp.baseline_ids.view(1, -1).to(model_device(model))
    acts, _, _ = probe_scaled_position(model, patcher, ids, use_cache=False)
    return acts


def rows_of(base: torch.Tensor, rows: int, device, dtype=torch.float32) -> torch.Tensor:
    """The baseline repeated for ``rows`` rows, as a leaf that requires grad: the scaled activation
    ``h = a' + alpha (a - a')`` then joins the autograd graph even when every weight is frozen. fp32 by default
    (the patched forward interpolates in fp32 and rounds once to the model's dtype)."""
    return base.to(device, dtype).expand(rows, -1).clone().requires_grad_(True)


def finish(acts: torch.Tensor, base: torch.Tensor, grad_sums: torch.Tensor, steps: int) -> torch.Tensor:
    """``(a - a') / m * sum_k w_k g_k`` in fp64."""
    return (acts.double() - base.double()) * grad_sums / steps
