"""Fast integrated gradients in bf16 (issue 20, item 2).

In a bf16 model the fast path computes its row attention (scores, softmax, weighted values over the cached prefix)
and the step interpolation ``a' + (k/m)(a - a')`` in fp32, like the reference path's attention. Tolerances, stated
once here: on the same prompts, bf16 fast IG keeps at least ``MIN_OVERLAP`` of the fp32 reference's per-example top
20 (the selection mining uses; the issue's target on one H200 is 0.9 as well) and stays within ``MAX_REL_L2`` of
its attributions (relative L2; measured 0.014-0.023 on these tiny models); two ``chunk_rows`` values agree within
the same bounds (on CPU they are bit-identical; on a GPU the batch of a matrix product changes its bf16 rounding).
"""
from types import SimpleNamespace

import pytest
import torch

import attribution.ig_fast as ig_fast
from attribution.ig import integrated_gradients
from attribution.ig_common import IGInput, IGOptions
from attribution.selection import example_topk
from attribution.targets import TARGETS
from model_patches.layouts.base import LayerControl
from model_patches.patcher import patch_model
from tests.support.models import tiny_model

torch.set_num_threads(1)
MIN_OVERLAP = 0.9
MAX_REL_L2 = 0.05


def top20(attr: torch.Tensor) -> set[int]:
    ids, _ = example_topk(attr, 0.1, 20)
    return set(ids[ids >= 0].tolist())


def overlap(got: torch.Tensor, want: torch.Tensor) -> float:
    wanted = top20(want)
    assert len(wanted) >= 10  # a top 20 worth comparing
    return len(top20(got) & wanted) / len(wanted)


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def frozen(family: str, seed: int, dtype: torch.dtype):
    """A frozen 3-layer tiny model whose parameters (not its fp32 RoPE buffers, as after a bf16 load) are in
    ``dtype``."""
    model = tiny_model(family, seed=seed, layers=3).requires_grad_(False)
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model


@pytest.mark.parametrize("family,seed", [("llama", 0), ("qwen2", 1), ("gemma2", 2)])
def test_bf16_fast_ig_agrees_with_the_fp32_reference_whatever_chunk_rows(family, seed):
    model = frozen(family, seed, torch.float32)
    gen = torch.Generator().manual_seed(7 + seed)
    prompt, query = torch.randint(3, 97, (40,), generator=gen), torch.randint(3, 97, (9,), generator=gen)
    inp = IGInput(prompt, query, TARGETS["yes_prob"]((11,)))
    ref = integrated_gradients(model, patch_model(model), inp, IGOptions(steps=20, chunk_rows=20), "reference")
    bf16 = frozen(family, seed, torch.bfloat16)
    patcher = patch_model(bf16)
    runs = {rows: integrated_gradients(bf16, patcher, inp, IGOptions(steps=20, chunk_rows=rows), "fast")
            for rows in (7, 64)}
    for res in runs.values():
        assert overlap(res.attributions, ref.attributions) >= MIN_OVERLAP
        assert rel_l2(res.attributions, ref.attributions) <= MAX_REL_L2
    assert overlap(runs[7].attributions, runs[64].attributions) >= MIN_OVERLAP
    assert rel_l2(runs[7].attributions, runs[64].attributions) <= MAX_REL_L2


def test_row_attention_in_bf16_rounds_only_its_output(monkeypatch):
    """Over a 1k-token prefix the bf16 rows' attention equals the exact (fp64) attention of the same bf16 inputs
    rounded once to bf16; scores or probabilities rounded to bf16 (the earlier code) were ~7 times further off."""
    gen = torch.Generator().manual_seed(0)
    rows, kv_heads, groups, dim, prefix = 8, 2, 4, 64, 1024

    def bf16(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(torch.bfloat16)

    q = bf16(rows, kv_heads * groups, 1, dim, scale=2.0)
    k, v = bf16(rows, kv_heads, 1, dim), bf16(rows, kv_heads, 1, dim)
    pk, pv = bf16(kv_heads, prefix, dim), bf16(kv_heads, prefix, dim)
    state = ig_fast._RowState()
    state.prefix = {0: (pk.float(), pv.float())}  # as the prefill cache is kept (fp32)
    monkeypatch.setattr(ig_fast, "_STATE", state)
    out, _ = ig_fast.rows_attention(SimpleNamespace(layer_idx=0), q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 1, kv_heads * groups, dim)
    keys = torch.cat([pk.double().expand(rows, -1, -1, -1), k.double()], dim=2)  # [R, Hkv, P + 1, d]
    values = torch.cat([pv.double().expand(rows, -1, -1, -1), v.double()], dim=2)
    scores = torch.einsum("rhgd,rhpd->rhgp", q.double().view(rows, kv_heads, groups, dim), keys) * dim ** -0.5
    exact = torch.einsum("rhgp,rhpd->rhgd", scores.softmax(-1), values).reshape(rows, 1, kv_heads * groups, dim)
    rounding = (exact.to(torch.bfloat16).double() - exact).abs().max()
    assert (out.double() - exact).abs().max() <= 1.5 * rounding


def test_scale_interpolates_in_fp32_and_returns_the_model_dtype():
    patcher = SimpleNamespace(scaled={})
    ctl = LayerControl(patcher, 0, torch.nn.Module())
    gen = torch.Generator().manual_seed(0)
    current = torch.randn(20, 16, generator=gen).to(torch.bfloat16)
    baseline = torch.randn(1, 16, generator=gen).expand(20, -1).clone().requires_grad_(True)
    alphas = torch.arange(20) / 20
    ctl.scale = (torch.arange(20), alphas, baseline)
    h = ctl.apply_scale(current)
    published = patcher.scaled[0]
    assert h.dtype == torch.bfloat16 and published.dtype == torch.float32
    exact = baseline.detach() + alphas.unsqueeze(-1) * (current.float() - baseline.detach())
    assert torch.equal(published.detach(), exact)  # k/m not rounded to bf16 (1/20 would be 0.0500488)
    assert torch.equal(h, exact.to(torch.bfloat16))
    (grad,) = torch.autograd.grad(published.sum(), [baseline])
    assert torch.allclose(grad, 1 - alphas.unsqueeze(-1).expand(-1, 16))
