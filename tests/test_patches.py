"""model_patches: FFN layouts, idle patch, probe, scale, deactivate, unpatch — on tiny models of every family."""
import pytest
import torch

from model_patches import (SUPPORTED_ARCHITECTURES, get_ffn_layout, get_patcher, patch_model,
                           unpatch_model)
from model_patches.compat import cache_kwargs, output_cache
from neurorit.errors import UserError
from tests.support.models import MOE_FAMILIES, TINY_FAMILIES, tiny_inputs

torch.set_num_threads(1)


def logits(model, x, **kw):
    with torch.no_grad():
        return model(x, **kw).logits


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_idle_patch_is_bitwise_invisible(family, tiny_model):
    model, x = tiny_model(family), tiny_inputs()
    ref = logits(model, x)
    patcher = patch_model(model)
    assert patcher.num_layers == 2
    assert patcher.intermediate_size == (4 * 128 if family in MOE_FAMILIES else 128)
    assert torch.equal(logits(model, x), ref)
    with patcher.probe(layers=[0]):  # probing one layer leaves the other on the original path
        assert torch.allclose(logits(model, x), ref, atol=1e-6)
    assert torch.equal(logits(model, x), ref)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_deactivate_equals_zeroed_down_column(family, tiny_model):
    model, x = tiny_model(family), tiny_inputs()
    patcher = patch_model(model)
    d_ff = patcher.intermediate_size
    neurons = torch.tensor([0, 5, d_ff // 2 + 3, d_ff - 1])  # for MoE these span several experts
    patcher.set_deactivated({1: neurons})
    got = logits(model, x)
    other = tiny_model(family)
    layout = get_ffn_layout(other)
    ffn = layout.ffn_module(layout.layers(other)[1])
    with torch.no_grad():
        if layout.layout == "moe":
            experts, local = layout.split(neurons)
            ffn.down_proj[experts, :, local] = 0.0
        else:
            ffn.down_proj.weight[:, neurons] = 0.0
    assert (got - logits(other, x)).abs().max() < 1e-6
    patcher.clear_deactivated()
    assert torch.equal(logits(model, x), logits(tiny_model(family), x))


@pytest.mark.parametrize("family", ["llama", "phi3", "mixtral"])
def test_probe_shapes_and_values(family, tiny_model):
    model, x = tiny_model(family), tiny_inputs(batch=2, seq=6)
    patcher = patch_model(model)
    with patcher.probe(positions="all") as every, torch.no_grad():
        model(x)
    with patcher.probe(layers=[1]) as last, torch.no_grad():
        model(x)
    with patcher.probe(positions=[0, -1]) as some, torch.no_grad():
        model(x)
    d_ff = patcher.intermediate_size
    assert set(every) == {0, 1} and set(last) == {1}
    assert every[0].shape == (2, 6, d_ff) and last[1].shape == (2, d_ff) and some[1].shape == (2, 2, d_ff)
    assert torch.equal(last[1], every[1][:, -1])
    assert torch.equal(some[1], every[1][:, [0, 5]])
    if family in MOE_FAMILIES:  # each token feeds exactly top-k = 2 experts
        blocks = every[0].view(2, 6, 4, -1).abs().sum(-1) > 0
        assert (blocks.sum(-1) == 2).all()
    else:  # equals the input of down_proj seen by a hook on an unpatched model
        seen = {}
        ref = tiny_model(family)
        down = get_ffn_layout(ref).ffn_module(ref.model.layers[0]).down_proj
        down.register_forward_pre_hook(lambda m, args: seen.setdefault("a", args[0]))
        logits(ref, x)
        assert torch.allclose(every[0], seen["a"], atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma2", "phi3", "qwen2_moe"])
def test_scale_alpha_one_reproduces_output(family, tiny_model):
    model, x = tiny_model(family), tiny_inputs()
    patcher = patch_model(model)
    ref = logits(model, x)
    with patcher.probe() as acts, torch.no_grad():
        model(x)
    rows = torch.tensor([0, 1])
    patcher.set_scale({l: (rows, torch.ones(2), 0.5 * acts[l]) for l in (0, 1)})
    assert (logits(model, x) - ref).abs().max() < 1e-5
    assert patcher.scaled[0].shape == (2, patcher.intermediate_size)
    patcher.clear_scale()
    assert torch.equal(logits(model, x), ref) and patcher.scaled == {}


@pytest.mark.parametrize("family", ["llama", "phi3", "mixtral"])
def test_scale_gradients_match_finite_differences(family, tiny_model):
    model = tiny_model(family).double()
    model.config._experts_implementation = "eager"  # grouped_mm has no float64 kernel
    x = tiny_inputs(batch=1, seq=5)
    patcher = patch_model(model)
    layer = 1 if family in MOE_FAMILIES else 0  # MoE: a finite step could flip a later layer's routing
    with patcher.probe() as acts, torch.no_grad():
        model(x)
    a = acts[layer]

    def target(alpha, base):
        patcher.set_scale({layer: (torch.tensor([0]), torch.tensor([alpha], dtype=torch.float64), base)})
        return torch.softmax(model(x).logits[0, -1], -1)[7]

    def derivative(fn, eps=0.05):  # central differences + Richardson: RMSNorm computes in float32 even in a
        with torch.no_grad():      # float64 model, so steps must be large enough to rise above that rounding
            d = [(fn(h) - fn(-h)) / (2 * h) for h in (eps, eps / 2)]
        return (4 * d[1] - d[0]) / 3

    zero = torch.zeros_like(a)
    (grad,) = torch.autograd.grad(target(0.6, zero), [patcher.scaled[layer]])
    fd = derivative(lambda h: target(0.6 + h, zero))
    assert torch.allclose(fd, (grad * a).sum(), rtol=1e-4, atol=1e-9)
    (grad0,) = torch.autograd.grad(target(0.0, a), [patcher.scaled[layer]])  # at alpha 0, h = baseline
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        direction = torch.randn(a.shape, generator=gen, dtype=torch.float64) * a.std()
        fd = derivative(lambda h: target(0.0, a + h * direction))
        assert torch.allclose(fd, (grad0 * direction).sum(), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_scale_several_layers_in_one_batch(family, tiny_model):
    model, x = tiny_model(family), tiny_inputs(batch=1, seq=6)
    x2 = x.repeat(2, 1)
    patcher = patch_model(model)
    with patcher.probe() as acts, torch.no_grad():
        model(x)
    base = {l: 0.3 * acts[l] for l in (0, 1)}
    alpha = torch.tensor([0.25])
    patcher.set_scale({0: (torch.tensor([0]), alpha, base[0]), 1: (torch.tensor([1]), alpha, base[1])})
    both = logits(model, x2)
    for layer in (0, 1):
        patcher.set_scale({layer: (torch.tensor([0]), alpha, base[layer])})
        assert (both[layer] - logits(model, x)[0]).abs().max() < 1e-5


def test_scale_single_token_over_kv_cache(tiny_model):
    model, x = tiny_model("llama"), tiny_inputs(batch=2, seq=6)
    patcher = patch_model(model)
    with patcher.probe() as acts, torch.no_grad():
        model(x)
    rows, alphas = torch.tensor([0, 1]), torch.tensor([0.2, 0.7])
    patcher.set_scale({1: (rows, alphas, torch.zeros_like(acts[1]))})
    full = logits(model, x)[:, -1]
    patcher.clear_scale()
    with torch.no_grad():
        past = output_cache(model(x[:, :-1], use_cache=True))
    patcher.set_scale({1: (rows, alphas, torch.zeros_like(acts[1]))})
    step = logits(model, x[:, -1:], **cache_kwargs(model, past))[:, -1]
    assert (full - step).abs().max() < 1e-5


def test_unpatch_restores_and_second_model_unaffected(tiny_model):
    first, second, x = tiny_model("llama"), tiny_model("llama", seed=1), tiny_inputs()
    ref_first, ref_second = logits(first, x), logits(second, x)
    patcher = patch_model(first)
    assert get_patcher(first) is patcher and patch_model(first) is patcher
    patcher.set_deactivated({0: torch.arange(64)})
    assert not torch.equal(logits(first, x), ref_first)
    assert torch.equal(logits(second, x), ref_second)
    assert all("forward" not in layer.mlp.__dict__ for layer in second.model.layers)
    patcher.add_neuron_deltas({0: torch.tensor([1, 2])})
    with pytest.raises(UserError, match="neuron deltas"):
        unpatch_model(first)
    patcher.remove_neuron_deltas()
    unpatch_model(first)
    assert all("forward" not in layer.mlp.__dict__ for layer in first.model.layers)
    assert torch.equal(logits(first, x), ref_first)
    with pytest.raises(UserError, match="not patched"):
        get_patcher(first)


def test_unknown_architecture_lists_supported():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UserError) as err:
        patch_model(model)
    assert "gpt2" in str(err.value) and all(a in str(err.value) for a in SUPPORTED_ARCHITECTURES)


def test_bad_inputs_are_user_errors(tiny_model):
    patcher = patch_model(tiny_model("llama"))
    with pytest.raises(UserError, match="out of range"):
        patcher.set_deactivated({9: torch.tensor([0])})
    with pytest.raises(UserError, match=r"\[0, 128\)"):
        patcher.set_deactivated({0: torch.tensor([128])})
    with pytest.raises(UserError, match="distinct"):
        patcher.add_neuron_deltas({0: torch.tensor([3, 3])})
    with pytest.raises(UserError, match="baseline"):
        patcher.set_scale({0: (torch.tensor([0]), torch.ones(1), torch.zeros(1, 5))})
