"""model_patches layouts: the model-type registry, each layout's weight roles and fold, ``model_fingerprint``, and
a new layout (a plain, non-gated ``fc1 -> act -> fc2`` FFN, as in Phi-2) added with nothing but its class and a
registry entry, to show that the patcher, probe / scale / deactivate / deltas and export need no change."""
import functools

import pytest
import torch
import torch.nn.functional as F
import transformers as tf

from model_patches import (SUPPORTED_ARCHITECTURES, export_hf, get_ffn_layout,  # noqa: E402
                           merge_into_weights, model_fingerprint, patch_model)
from model_patches.layout_registry import LAYOUTS  # noqa: E402
from model_patches.layouts.base import FFNLayout  # noqa: E402
from model_patches.layouts.fused import FusedGateUpLayout  # noqa: E402
from model_patches.layouts.gated import GatedLayout  # noqa: E402
from model_patches.layouts.moe import MoEExpertsLayout  # noqa: E402
from tests.support.models import MOE_FAMILIES, TINY_FAMILIES, tiny_inputs, tiny_model
from neurorit.errors import UserError  # noqa: E402

torch.set_num_threads(1)
EXPECTED = {"phi3": FusedGateUpLayout, "mixtral": MoEExpertsLayout, "qwen2_moe": MoEExpertsLayout}


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


# ----------------------------------------------------------------------------------------------- registry
def test_registry_covers_every_family():
    assert SUPPORTED_ARCHITECTURES == tuple(LAYOUTS) and set(TINY_FAMILIES) == set(LAYOUTS)
    for family in TINY_FAMILIES:
        model = tiny_model(family)
        layout = get_ffn_layout(model)
        assert type(layout) is EXPECTED.get(family, GatedLayout)
        assert (layout.model_type, layout.hidden_size, layout.expert_size) == (family, 64, 128)
        assert layout.num_experts == (4 if family in MOE_FAMILIES else 1)
        assert layout.intermediate_size == layout.expert_size * layout.num_experts
        assert len(layout.ffn_modules(model)) == 2
        assert set(layout.weights(layout.ffn_modules(model)[0])) == set(layout.ROLES)


def test_unregistered_model_type_is_a_user_error():
    model = tiny_model("llama")
    model.config.model_type = "llama_but_not"
    with pytest.raises(UserError, match="llama_but_not.*supported: llama, mistral"):
        get_ffn_layout(model)
    with pytest.raises(UserError, match="not supported"):
        get_ffn_layout(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("family", ["llama", "phi3", "qwen2_moe"])
def test_model_fingerprint(family):
    class Engine(torch.nn.Module):  # what a DeepSpeed engine looks like to unwrap
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = tiny_model(family)
    want = {"architecture": family, "num_layers": 2, "intermediate_size": 512 if family in MOE_FAMILIES else 128}
    assert model_fingerprint(model) == want and model_fingerprint(Engine(model)) == want


# ------------------------------------------------------------------------------------ weight roles, fold
def owned_mask(layout, role, weight, ids):
    """Entries of ``weight`` that neurons ``ids`` own, written out per layout class (not from ROLES)."""
    experts, local = layout.split(ids)
    mask = torch.zeros_like(weight, dtype=torch.bool)
    width = layout.expert_size
    if isinstance(layout, MoEExpertsLayout):
        if role == "gate_up":
            mask[experts, local] = mask[experts, local + width] = True
        else:
            mask[experts, :, local] = True
    elif role == "gate_up":
        mask[local] = mask[local + width] = True
    elif role == "down":
        mask[:, local] = True
    else:
        mask[local] = True
    return mask


@pytest.mark.parametrize("family", ["llama", "phi3", "mixtral"])
def test_fold_touches_exactly_the_owned_rows_and_columns(family):
    model = tiny_model(family)
    layout = get_ffn_layout(model)
    ids = torch.tensor([3, 40, layout.intermediate_size - 1])
    gen = torch.Generator().manual_seed(0)
    deltas = (ids,) + tuple(torch.randn(s, generator=gen) for s in layout.delta_shapes(3))
    for role, weight in layout.weights(layout.ffn_modules(model)[0]).items():
        mask = owned_mask(layout, role, weight, ids)
        folded = layout.fold(role, weight, deltas, None)
        assert torch.equal(folded[~mask], weight.detach()[~mask])
        assert not torch.equal(folded[mask], weight.detach()[mask])
        added = (folded - weight.detach())[mask]
        pieces = {"gate": deltas[1], "up": deltas[2], "down": deltas[3].t()}
        kinds = [k for k, _ in layout.ROLES[role]]
        assert added.abs().sum().item() == pytest.approx(sum(pieces[k].abs().sum().item() for k in kinds), rel=1e-4)
        dead = layout.fold(role, weight, None, ids)
        if role == "down":
            assert (dead[mask] == 0).all() and torch.equal(dead[~mask], weight.detach()[~mask])
        else:
            assert torch.equal(dead, weight.detach())


# ------------------------------------------------------------------------------ a new layout, end to end
class PlainLayout(FFNLayout):
    """Non-gated ``fc2(act(fc1(x)))`` (Phi-2 ``PhiMLP``): neuron i owns fc1 row i and fc2 column i. There is no
    gate, so the gate delta stays unused (the patcher registers all three deltas)."""

    layout = "plain"
    ROLES = {"up": (("up", 0),), "down": (("down", 0),)}

    def patches(self, ctl, layer):
        return [(self.ffn_module(layer), functools.partial(self.forward, ctl))]

    def weights(self, module):
        return {"up": module.fc1.weight, "down": module.fc2.weight}

    def forward(self, ctl, original, x):
        if not ctl.active:
            return original(x)
        mod, idx = ctl.module, ctl.delta_index
        up = mod.fc1(x)
        if idx is not None:
            up.index_add_(-1, idx, F.linear(x, mod.neuron_delta_up))
        a = mod.activation_fn(up)
        if ctl.dead is not None:
            a.index_fill_(-1, ctl.dead, 0.0)
        if ctl.scale is not None:
            rows, last = ctl.scale[0], a.shape[-2] - 1
            a = a.index_put((rows, torch.full_like(rows, last)), ctl.apply_scale(a[rows, last]))
        if ctl.probing:
            ctl.record(a.detach().index_select(-2, ctl.probe_positions(a.shape[-2], a.device)))
        out = mod.fc2(a)
        if idx is not None:
            out = out + F.linear(a.index_select(-1, idx), mod.neuron_delta_down)
        return out


def tiny_phi(seed=0):
    cfg = tf.PhiConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.copy_(0.08 * torch.randn(p.shape, generator=gen) + (1.0 if p.dim() == 1 and p.shape[0] == 64 else 0))
    return model.float().eval()


def test_new_layout_needs_only_its_class_and_a_registry_entry(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="'phi'"):
        patch_model(tiny_phi())
    monkeypatch.setitem(LAYOUTS, "phi", PlainLayout)
    model, x = tiny_phi(), tiny_inputs(batch=2, seq=6)
    ref = logits(model, x)
    patcher = patch_model(model)
    assert isinstance(patcher.layout, PlainLayout) and patcher.intermediate_size == 128
    assert torch.equal(logits(model, x), ref)  # idle: bitwise invisible
    seen = {}
    hook = model.model.layers[0].mlp.fc2.register_forward_pre_hook(lambda m, args: seen.update(a=args[0]))
    with patcher.probe(positions="all") as acts:
        assert torch.equal(logits(model, x), ref)
    hook.remove()
    assert torch.equal(acts[0], seen["a"])
    patcher.set_scale({1: (torch.tensor([0, 1]), torch.ones(2), 0.5 * acts[1][:, -1])})
    assert (logits(model, x) - ref).abs().max() < 1e-5 and patcher.scaled[1].shape == (2, 128)
    patcher.clear_scale()
    patcher.set_deactivated({1: torch.tensor([0, 9, 127])})
    zeroed = tiny_phi()
    with torch.no_grad():
        zeroed.model.layers[1].mlp.fc2.weight[:, [0, 9, 127]] = 0.0
    assert (logits(model, x) - logits(zeroed, x)).abs().max() < 1e-6
    params = patcher.add_neuron_deltas({0: torch.tensor([2, 70]), 1: torch.tensor([5])})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    want = logits(model, x)
    assert not torch.allclose(want, logits(zeroed, x), atol=1e-4)
    export_hf(model, str(tmp_path), fold_deactivation=True)
    loaded = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert (logits(loaded, x) - want).abs().max() < 1e-5
    merge_into_weights(model, fold_deactivation=True)
    assert not patcher.neuron_deltas() and (logits(model, x) - want).abs().max() < 1e-5
