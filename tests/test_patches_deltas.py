"""Neuron deltas: training them equals masked full-weight training; merge and export round trips."""
import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from model_patches import export_hf, get_ffn_layout, load_causal_lm, merge_into_weights, patch_model
from neurorit.errors import UserError
from tests.support.models import MOE_FAMILIES, TINY_FAMILIES, tiny_config, tiny_inputs

torch.set_num_threads(1)
SELECTED = {0: [1, 7, 100], 1: [0, 64, 127]}  # MoE: ids are expert * 128 + index, remapped below


def selected(family):
    if family in MOE_FAMILIES:  # spread over several experts
        return {0: [1, 128 + 7, 3 * 128 + 100], 1: [0, 2 * 128 + 64, 2 * 128 + 65]}
    return SELECTED


def ffn_weight_masks(model, spec):
    """``{param: 0/1 mask}`` of the entries full-weight training may change: selected gate/up rows, down cols."""
    layout = get_ffn_layout(model)
    masks = {}
    for layer, ids in spec.items():
        mod = layout.ffn_module(layout.layers(model)[layer])
        experts, local = layout.split(torch.tensor(ids))
        width = layout.expert_size
        if layout.layout == "moe":
            gu, down = mod.gate_up_proj, mod.down_proj
            masks[gu] = torch.zeros_like(gu)
            masks[gu][experts, local] = 1
            masks[gu][experts, local + width] = 1
            masks[down] = torch.zeros_like(down)
            masks[down][experts, :, local] = 1
            continue
        if layout.layout == "fused":
            gu = mod.gate_up_proj.weight
            masks[gu] = torch.zeros_like(gu)
            masks[gu][local] = 1
            masks[gu][local + width] = 1
        else:
            for proj in (mod.gate_proj.weight, mod.up_proj.weight):
                masks[proj] = torch.zeros_like(proj)
                masks[proj][local] = 1
        down = mod.down_proj.weight
        masks[down] = torch.zeros_like(down)
        masks[down][:, local] = 1
    return masks


def lm_loss(model, x):
    logits = model(x).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


@pytest.mark.parametrize("family", ["llama", "phi3", "mixtral"])
def test_delta_training_equals_masked_full_weight_training(family, tiny_model):
    spec, x = selected(family), tiny_inputs(batch=2, seq=8)
    deltas_model, full_model = tiny_model(family), tiny_model(family)
    for model in (deltas_model, full_model):
        model.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in full_model.named_parameters()}
    params = patch_model(deltas_model).add_neuron_deltas({l: torch.tensor(ids) for l, ids in spec.items()})
    assert [tuple(p.shape) for p in params[:3]] == [(3, 64), (3, 64), (64, 3)]
    masks = ffn_weight_masks(full_model, spec)
    for p in masks:
        p.requires_grad_(True)
    opt_d = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    opt_f = torch.optim.AdamW(list(masks), lr=1e-3, weight_decay=0.0)
    for _ in range(20):
        for model, opt in ((deltas_model, opt_d), (full_model, opt_f)):
            opt.zero_grad()
            lm_loss(model, x).backward()
            if opt is opt_f:
                for p, mask in masks.items():
                    p.grad.mul_(mask)
            opt.step()
    assert all(float(p.detach().abs().max()) > 1e-3 for p in params)  # the deltas really trained
    touched = {id(p) for p in masks}
    for name, p in full_model.named_parameters():
        keep = (1 - masks[p]).bool() if id(p) in touched else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach()[keep], before[name][keep]), name
    base = {n: p for n, p in deltas_model.named_parameters() if "neuron_delta" not in n}
    assert all(torch.equal(p, before[n]) for n, p in base.items())  # frozen base untouched
    with torch.no_grad():
        assert (deltas_model(x).logits - full_model(x).logits).abs().max() < 1e-5
    merge_into_weights(deltas_model)
    assert not any("neuron_delta" in n for n, _ in deltas_model.named_parameters())
    for name, p in deltas_model.named_parameters():
        assert (p - dict(full_model.named_parameters())[name]).abs().max() < 1e-5, name


def randomise_deltas(patcher, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, *tensors in patcher.neuron_deltas().values():
            for t in tensors:
                t.copy_(0.05 * torch.randn(t.shape, generator=gen))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_export_round_trip(family, tmp_path, tiny_model):
    model, x = tiny_model(family), tiny_inputs()
    patcher = patch_model(model)
    patcher.add_neuron_deltas({l: torch.tensor(ids) for l, ids in selected(family).items()})
    randomise_deltas(patcher)
    patcher.set_deactivated({1: torch.tensor([3, 64, 127])})
    with torch.no_grad():
        want = model(x).logits
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    export_hf(model, str(tmp_path), fold_deactivation=True)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())  # live model untouched
    assert patcher.deactivated() and patcher.neuron_deltas()
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert "_neurorit_patcher" not in loaded.__dict__
    with torch.no_grad():
        assert (loaded(x).logits - want).abs().max() < 1e-5
    merge_into_weights(model, fold_deactivation=True)  # in place: same function, plain weights
    assert not patcher.deactivated() and not patcher.neuron_deltas()
    with torch.no_grad():
        assert (model(x).logits - want).abs().max() < 1e-5


def test_export_shards_and_load_causal_lm(tmp_path, tiny_model):
    model, x = tiny_model("qwen2"), tiny_inputs()
    patcher = patch_model(model)
    patcher.add_neuron_deltas({0: torch.tensor([5, 9])})
    randomise_deltas(patcher, seed=3)
    with torch.no_grad():
        want = model(x).logits
    export_hf(model, str(tmp_path), max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((tmp_path / s).is_file() for s in shards)
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))  # no temp files left
    assert not any("neuron_delta" in k for k in index["weight_map"])
    loaded = load_causal_lm(str(tmp_path), attn_implementation="eager", device="cpu").eval()
    with torch.no_grad():
        assert (loaded(x).logits - want).abs().max() < 1e-5


def test_export_tied_embeddings(tmp_path):
    from transformers import AutoModelForCausalLM as Auto

    cfg = tiny_config("gemma")
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    model, x = Auto.from_config(cfg, attn_implementation="eager").eval(), tiny_inputs()
    patcher = patch_model(model)
    patcher.add_neuron_deltas({1: torch.tensor([2, 50])})
    randomise_deltas(patcher, seed=4)
    with torch.no_grad():
        want = model(x).logits
    export_hf(model, str(tmp_path))
    loaded = Auto.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert (loaded(x).logits - want).abs().max() < 1e-5


def test_load_causal_lm_errors(tmp_path, tiny_model):
    with pytest.raises(UserError, match="does not exist"):
        load_causal_lm(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no config.json"):
        load_causal_lm(str(tmp_path))
    with pytest.raises(UserError, match="dtype"):
        (tmp_path / "config.json").write_text("{}")
        load_causal_lm(str(tmp_path), dtype="float8")
    with pytest.raises(UserError, match="max_shard_size"):
        export_hf(tiny_model("llama"), str(tmp_path / "out"), max_shard_size="lots")
