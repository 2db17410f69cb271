"""Integrated gradients: the fast cached path equals the reference, completeness, chunk-size independence."""
from __future__ import annotations

import pytest
import torch

from attribution.ig import integrated_gradients
from attribution.ig_common import IGInput, IGOptions
from attribution.ig_fast import row_chunks
from attribution.selection import example_topk
from attribution.targets import TARGETS
from model_patches.patcher import patch_model
from tests.support.models import TINY_FAMILIES, tiny_model

torch.set_num_threads(1)


def _setup(family: str, layers: int = 3, frozen: bool = True):
    model = tiny_model(family, layers=layers)
    if frozen:
        model.requires_grad_(False)
    gen = torch.Generator().manual_seed(7)
    prompt = torch.randint(3, 97, (24,), generator=gen)
    query = torch.randint(3, 97, (9,), generator=gen)
    return model, patch_model(model), prompt, query


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _top20(attr: torch.Tensor) -> set[int]:
    ids, _ = example_topk(attr, 0.1, 20)
    return set(ids[ids >= 0].tolist())


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("rule", ["standard", "ircan"])
@pytest.mark.parametrize("baseline", ["query", "zero"])
@pytest.mark.parametrize("target", ["yes_prob", "answer_logprob"])
def test_fast_equals_reference(family, rule, baseline, target):
    model, patcher, prompt, query = _setup(family)
    inp = IGInput(prompt, query if baseline == "query" else None, TARGETS[target]((11,)))
    options = IGOptions(steps=8, ig_rule=rule, chunk_rows=5)
    ref = integrated_gradients(model, patcher, inp, options, "reference")
    fast = integrated_gradients(model, patcher, inp, options, "fast")
    assert _rel_err(fast.attributions, ref.attributions) <= 1e-4
    assert _top20(fast.attributions) == _top20(ref.attributions)
    assert len(_top20(ref.attributions)) > 0
    assert abs(fast.f_input - ref.f_input) <= 1e-5 * max(1.0, abs(ref.f_input))
    assert torch.allclose(fast.f_baseline, ref.f_baseline, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f not in ("llama", "qwen2", "mistral")])
def test_fast_equals_reference_other_families(family):
    model, patcher, prompt, query = _setup(family, layers=2)
    inp = IGInput(prompt, query, TARGETS["yes_prob"]((11,)))
    options = IGOptions(steps=4, chunk_rows=3)
    ref = integrated_gradients(model, patcher, inp, options, "reference")
    fast = integrated_gradients(model, patcher, inp, options, "fast")
    assert _rel_err(fast.attributions, ref.attributions) <= 1e-4


@pytest.mark.parametrize("baseline", ["query", "zero"])
def test_completeness_gap_shrinks_with_steps(baseline):
    """Per layer, sum_i attr_i -> F(a) - F(a') as the left Riemann sum gets finer (gap ~ 1/m)."""
    model, patcher, prompt, query = _setup("llama", layers=2)
    inp = IGInput(prompt, query if baseline == "query" else None, TARGETS["answer_logprob"]((11,)))
    gaps = []
    for steps in (8, 256):
        res = integrated_gradients(model, patcher, inp, IGOptions(steps=steps, chunk_rows=128))
        gaps.append(res.completeness_gap().abs())
        delta = (res.f_input - res.f_baseline).abs()
    assert (gaps[1] < gaps[0] / 8).all()
    assert (gaps[1] <= 0.02 * delta).all()


def test_ircan_weights_steps_by_k_over_m():
    """With one step the ircan weight k/m is 0 for the only term: all attributions vanish."""
    model, patcher, prompt, query = _setup("llama", layers=2)
    inp = IGInput(prompt, query, TARGETS["yes_prob"]((11,)))
    res = integrated_gradients(model, patcher, inp, IGOptions(steps=1, ig_rule="ircan"))
    assert torch.count_nonzero(res.attributions) == 0
    std = integrated_gradients(model, patcher, inp, IGOptions(steps=1))
    assert torch.count_nonzero(std.attributions) > 0


def test_chunk_size_does_not_change_results():
    model, patcher, prompt, query = _setup("qwen2")
    inp = IGInput(prompt, query, TARGETS["yes_prob"]((11,)))
    results = [integrated_gradients(model, patcher, inp, IGOptions(steps=6, chunk_rows=c)) for c in (1, 7, 18, 500)]
    for res in results[1:]:
        assert _rel_err(res.attributions, results[0].attributions) <= 1e-5
        assert _top20(res.attributions) == _top20(results[0].attributions)


def test_frozen_and_trainable_weights_agree():
    frozen_model, frozen, prompt, query = _setup("llama", frozen=True)
    live_model, live, _, _ = _setup("llama", frozen=False)
    inp = IGInput(prompt, query, TARGETS["yes_prob"]((11,)))
    a = integrated_gradients(frozen_model, frozen, inp, IGOptions(steps=4)).attributions
    b = integrated_gradients(live_model, live, inp, IGOptions(steps=4)).attributions
    assert torch.equal(a, b)
    assert all(p.grad is None for p in live_model.parameters())


def test_row_chunks_cover_every_layer_step_once():
    chunks = row_chunks(layers=3, steps=5, chunk_rows=4)
    flat = [row for chunk in chunks for row in chunk]
    assert flat == [(layer, k) for layer in range(3) for k in range(5)]
    assert max(len(c) for c in chunks) == 4


def test_prompt_longer_than_a_sliding_window():
    """Gemma-2 alternates sliding (window 64) and full layers: the cached rows must see exactly the window."""
    model, patcher, _, query = _setup("gemma2", layers=2)
    prompt = torch.randint(3, 97, (100,), generator=torch.Generator().manual_seed(3))
    inp = IGInput(prompt, query, TARGETS["yes_prob"]((11,)))
    options = IGOptions(steps=4, chunk_rows=3)
    ref = integrated_gradients(model, patcher, inp, options, "reference")
    fast = integrated_gradients(model, patcher, inp, options, "fast")
    assert _rel_err(fast.attributions, ref.attributions) <= 1e-4
