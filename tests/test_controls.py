"""The controls of the map (issue 27), registry entries any user runs by name: neurons_only and its random twin
(the three groups without the target-layer FFNs), random_layers (layer tuning on as many random layers, the draw
recorded) and random_hard_deactivation; none is run by the demo."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from model_patches import model_fingerprint, patch_model
from neurorit import methods
from neurorit.config import load_config
from neurorit.errors import UserError
from neurorit.neuron_map import NeuronMap
from tests.support.workspaces import GROUPS, HIDDEN, TARGET_LAYERS, setup_trainable, training_workspace
from train import recipes
from train.loop import run_stage
from train.trainable import random_layers

CONTROLS = ("neurons_only", "random_neurons_only", "random_layers", "random_hard_deactivation")


def _map(model, targets=TARGET_LAYERS) -> NeuronMap:
    groups = {g: torch.tensor([[layer, n, 1, 1] for layer, n in r], dtype=torch.long) for g, r in GROUPS.items()}
    return NeuronMap(groups, list(targets), model_fingerprint(model))


def _per_layer(rows) -> dict[int, int]:
    out: dict[int, int] = {}
    for layer, _ in rows:
        out[layer] = out.get(layer, 0) + 1
    return out


def test_controls_are_registry_entries_the_demo_does_not_run():
    for name in CONTROLS:
        m = methods.get(name)
        assert m.role == "control" and not m.reported and name in methods.REPORT_ORDER
        stage = next(iter(m.stages))
        assert getattr(load_config(None, [f"--{stage}.method", name]), stage).method == name


def test_neurons_only_trains_the_groups_in_every_layer_and_no_ffn(tiny_model):
    model = tiny_model("llama", layers=2, hidden=HIDDEN, intermediate=128)
    mined, _ = setup_trainable(model, "neurons_only", "stage2", _map(model))
    everything = [row for rows in GROUPS.values() for row in rows]
    assert mined.full_layers == [] and mined.ffn_count == 0
    assert {(layer, int(n)) for layer, ids in mined.neurons.items() for n in ids} == set(everything)
    assert mined.count == 3 * HIDDEN * len(everything)  # the target layer's group neurons as deltas too
    model = tiny_model("llama", layers=2, hidden=HIDDEN, intermediate=128)
    twin, _ = setup_trainable(model, "random_neurons_only", "stage2", _map(model))
    assert twin.full_layers == [] and twin.count == mined.count
    assert {k: v.numel() for k, v in twin.neurons.items()} == _per_layer(everything)
    assert {(layer, int(n)) for layer, ids in twin.neurons.items() for n in ids} != set(everything)
    model = tiny_model("llama", layers=2, hidden=HIDDEN, intermediate=128)
    again, _ = setup_trainable(model, "random_neurons_only", "stage2", _map(model))  # fixed seed
    assert all(torch.equal(again.neurons[k], v) for k, v in twin.neurons.items())


def test_random_layers_draws_as_many_layers_with_a_fixed_seed(tiny_model):
    model = tiny_model("llama", layers=8, hidden=HIDDEN, intermediate=128)
    nmap = _map(model, targets=[6, 7])
    trainable, _ = setup_trainable(model, "random_layers", "stage2", nmap)
    drawn = trainable.full_layers
    assert len(set(drawn)) == 2 and all(0 <= layer < 8 for layer in drawn) and trainable.neurons == {}
    assert trainable.details == {"random_layers": drawn} and drawn == random_layers(nmap, 0)
    assert trainable.ffn_count == sum(p.numel() for layer in drawn for p in model.model.layers[layer].mlp.parameters())
    assert len({tuple(random_layers(nmap, seed)) for seed in range(6)}) > 1  # a real draw, set by the seed
    with pytest.raises(UserError, match="random_layers replaces the target layers; set target_layers too"):
        recipes.build(methods.StageRule("neurons", options={"random_layers": True}))


def test_random_layers_records_its_draw(tmp_path, single_rank_env):
    config = training_workspace(str(tmp_path))
    summary = run_stage("stage2", load_config(config, ["--stage2.method", "random_layers",
                                                       "--stage2.init_from", str(tmp_path / "model")]))
    written = json.load(open(tmp_path / "out" / "stage2" / "train_summary.json"))
    assert written["random_layers"] == summary["random_layers"] and len(summary["random_layers"]) == 1


def test_random_hard_deactivation_switches_off_as_many_random_neurons(tmp_path, single_rank_env):
    config = training_workspace(str(tmp_path))
    summary = run_stage("stage1", load_config(config, ["--stage1.method", "random_hard_deactivation"]))
    assert summary["trainable_params"] == 0 and summary["deactivated_neurons"] == len(GROUPS["irrelevant_only"])
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "stage1" / "export")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).eval()
    zeroed = {layer: (exported.model.layers[layer].mlp.down_proj.weight == 0).all(0).nonzero().flatten().tolist()
              for layer in range(len(base.model.layers))}
    mined = NeuronMap.load(str(tmp_path / "out" / "mining")).per_layer("irrelevant_only")
    assert {k: len(v) for k, v in zeroed.items() if v} == {int(k): len(v) for k, v in mined.items()}
    assert any(sorted(zeroed[int(k)]) != sorted(int(n) for n in v) for k, v in mined.items())
    tokens = torch.tensor([[2, 5, 9, 14, 20, 7, 3]])
    with torch.no_grad():
        patch_model(base).set_deactivated({k: torch.tensor(v) for k, v in zeroed.items() if v})
        assert torch.allclose(exported(tokens).logits, base(tokens).logits, atol=1e-6, rtol=0)
