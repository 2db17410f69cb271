"""The method registry (neurorit/methods.py) and what its entries do: consistent entries, config validation from
it, a new baseline added as one entry, hard deactivation as an export rule, and the LoRA baseline (rank matched
to Neuro-RIT's count, merged export, 2-rank ZeRO-3)."""
import dataclasses
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from model_patches import get_ffn_layout, model_fingerprint, patch_model
from neurorit import methods
from neurorit.config import load_config
from neurorit.errors import UserError
from neurorit.methods import Method, StageRule
from neurorit.neuron_map import GROUPS as MAP_GROUPS
from neurorit.neuron_map import NeuronMap
from tests.support.workspaces import GROUPS, HIDDEN, TARGET_LAYERS, setup_trainable, training_workspace
from train import lora, recipes
from train.loop import init_path, run_stage
from train.trainable import Trainable, numel


def test_registry_entries_are_consistent():
    assert methods.REPORT_ORDER[0] == "base"
    assert {"robust_sft", "layer_tuning", "lora", "random_neurons", "neurorit_stage1", "neurorit",
            "neurorit_hard_deactivation"} <= set(methods.REPORT_ORDER)
    assert not {"full", "none"} & set(methods.REPORT_ORDER)
    for m in methods.METHODS.values():
        assert list(m.stages) == [s for s in methods.STAGES if s in m.stages], m.name  # pipeline order
        for rule in m.stages.values():
            recipe = recipes.build(rule)  # every entry names a recipe and options it takes
            assert rule.task in methods.TASKS, m.name
            assert set(getattr(recipe, "groups", ())) <= set(MAP_GROUPS), m.name
            assert getattr(recipe, "match_params_of", "") in ("", *methods.METHODS), m.name
        if m.run_of:  # evaluated from another run: its rules must be that run's
            other = methods.get(m.run_of)
            assert all(other.stages[s] == r for s, r in m.stages.items()), m.name
    assert methods.get("neurorit").chains() and not methods.get("layer_tuning").chains()
    assert recipes.build(methods.get("neurorit_hard_deactivation").rule("stage1")).needs_map
    assert not recipes.build(methods.get("robust_sft").rule("stage2")).needs_map
    with pytest.raises(UserError, match="unknown training recipe 'nope'"):
        recipes.build(StageRule("nope"))


def test_config_takes_stage_methods_from_the_registry():
    assert load_config(None, ["--stage2.method", "lora"]).stage2.method == "lora"
    for stage, bad in (("stage2", "layer"), ("stage1", "layer_tuning"), ("stage1", "neurorit_stage1")):
        with pytest.raises(UserError, match=f"'{stage}.method'.*use one of .*neurorit"):
            load_config(None, [f"--{stage}.method", bad])


def test_stage2_starts_from_stage1_only_for_methods_with_both_stages(tmp_path):
    cfg = load_config(None, ["--runtime.output_dir", str(tmp_path), "--model.path", "base"])
    assert init_path(cfg, "stage2", methods.get("layer_tuning")) == "base"
    assert init_path(cfg, "stage2", methods.get("lora")) == "base"
    with pytest.raises(UserError, match="stage 1's export"):
        init_path(cfg, "stage2", methods.get("neurorit"))
    (tmp_path / "stage1" / "export").mkdir(parents=True)
    assert init_path(cfg, "stage2", methods.get("random_neurons")) == str(tmp_path / "stage1" / "export")


def test_a_new_baseline_is_one_registry_entry(tmp_path, single_rank_env, monkeypatch):
    """The throwaway example of a new baseline: stage 2 trains only the relevant-only neurons. It needs this entry
    and nothing else: config validation, the trainable set, the data recipe and the export all come from it."""
    entry = Method("relevant_only", "stage 2 on the relevant-only neurons",
                   {"stage2": StageRule("neurons", "evidence", {"groups": ("relevant_only",)})})
    monkeypatch.setitem(methods.METHODS, entry.name, entry)
    config = training_workspace(str(tmp_path))
    cfg = load_config(config, ["--stage2.method", "relevant_only", "--stage2.init_from", str(tmp_path / "model")])
    summary = run_stage("stage2", cfg)
    assert summary["trainable_params"] == 3 * HIDDEN * len(GROUPS["relevant_only"])
    before = load_file(str(tmp_path / "model" / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "stage2" / "export" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.{layer}.mlp.{p}.weight" for layer in (0, 1)
                       for p in ("gate_proj", "up_proj", "down_proj")}


def test_hard_deactivation_is_folded_into_the_export(tmp_path, single_rank_env):
    """Stage 1 with neurorit_hard_deactivation trains nothing and exports the base model with its irrelevant-only
    neurons folded to zero: the plain export answers exactly as the base model with those neurons switched off."""
    config = training_workspace(str(tmp_path))
    summary = run_stage("stage1", load_config(config, ["--stage1.method", "neurorit_hard_deactivation"]))
    assert summary["trainable_params"] == 0 and summary["deactivated_neurons"] == len(GROUPS["irrelevant_only"])
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "stage1" / "export")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).eval()
    nmap = NeuronMap.load(str(tmp_path / "out" / "mining"))
    tokens = torch.tensor([[2, 5, 9, 14, 20, 7, 3]])
    with torch.no_grad():
        plain = base(tokens).logits
        patch_model(base).set_deactivated(nmap.per_layer("irrelevant_only"))
        switched_off = base(tokens).logits
        folded = exported(tokens).logits
    assert (plain - switched_off).abs().max() > 1e-4  # the neurons matter
    assert torch.allclose(folded, switched_off, atol=1e-6, rtol=0)


def smollm2_on_meta() -> torch.nn.Module:
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    with torch.device("meta"):
        return LlamaForCausalLM(config)


@pytest.mark.parametrize("shape", ["tiny", "smollm2"])
def test_lora_rank_matches_neurorit_count_within_ten_percent(shape, tiny_model):
    if shape == "tiny":
        model = tiny_model("llama", layers=2, hidden=HIDDEN, intermediate=128)
        rows = GROUPS
        targets = TARGET_LAYERS
    else:  # the paper's 100 / 100 / 30 neurons and 3 target layers on SmolLM2-135M's shape
        model = smollm2_on_meta()
        gen = torch.Generator().manual_seed(0)
        picks = torch.randperm(30 * 1536, generator=gen)[:230].tolist()
        flat = {"relevant_only": picks[:100], "irrelevant_only": picks[100:200], "shared": picks[200:]}
        rows = {g: [(i // 1536, i % 1536) for i in ids] for g, ids in flat.items()}
        targets = [27, 28, 29]
    groups = {g: torch.tensor([[layer, n, 1, 1] for layer, n in r], dtype=torch.long) for g, r in rows.items()}
    nmap = NeuronMap(groups, targets, model_fingerprint(model))
    neurorit = sum(recipes.build(r).planned_count(model, nmap, 0) for r in methods.get("neurorit").stages.values())
    rank = lora.rank_to_match(model, neurorit)
    count = rank * sum(i + o for i, o in lora.lora_linears(model).values())
    assert abs(count - neurorit) <= 0.1 * neurorit, (rank, count, neurorit)


def test_lora_trains_only_adapters_and_merges_exactly(tiny_model):
    model = tiny_model("llama", layers=2, hidden=HIDDEN, intermediate=128)
    groups = {g: torch.tensor([[layer, n, 1, 1] for layer, n in r], dtype=torch.long) for g, r in GROUPS.items()}
    nmap = NeuronMap(groups, TARGET_LAYERS, model_fingerprint(model))
    trainable, patcher = setup_trainable(model, "lora", "stage2", nmap)
    assert patcher is None  # LoRA wraps the linears instead
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert trainable.count == sum(p.numel() for p in trainable.params) and trainable.details["lora_rank"] >= 1
    with torch.no_grad():
        for p in trainable.params:
            p.normal_(0, 0.05)  # B starts at zero: make the adapters do something
    tokens = torch.tensor([[2, 5, 9, 14, 20, 7, 3]])
    with torch.no_grad():
        adapted = model(tokens).logits
    assert lora.merge_lora(model) == len(lora.lora_linears(model))
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert get_ffn_layout(model).ffn_modules(model)[0].gate_proj.__class__ is torch.nn.Linear
    with torch.no_grad():
        assert torch.allclose(model(tokens).logits, adapted, atol=1e-5, rtol=0)


@pytest.mark.distributed
def test_lora_two_rank_zero3_exports_a_merged_plain_checkpoint(tmp_path, run_ranks):
    config = training_workspace(str(tmp_path), stage_overrides={"lora": {"lr": 1e-2}})
    printed = run_ranks("train/stage2.py", "--config", config, "--stage2.method", "lora",
                        "--stage2.init_from", str(tmp_path / "model")).stdout
    assert "LoRA adapters of rank" in printed
    export = tmp_path / "out" / "stage2" / "export"
    tensors = load_file(str(export / "model.safetensors"))
    assert not any("lora" in k for k in tensors)
    base = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert tensors.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], tensors[k])}
    assert {k for k in changed if k.endswith("q_proj.weight")} and {k for k in changed if k.endswith("down_proj.weight")}
    assert not any("norm" in k or "embed" in k for k in changed)
    model = AutoModelForCausalLM.from_pretrained(str(export))
    assert isinstance(model.model.layers[0].mlp.up_proj, torch.nn.Linear)
    assert dataclasses.is_dataclass(methods.get("lora").rule("stage2"))
    assert os.path.isfile(tmp_path / "out" / "stage2" / "train_summary.json")


def test_a_new_kind_of_trainable_set_is_one_recipe_and_one_entry(tmp_path, single_rank_env, monkeypatch):
    """A baseline of a kind no recipe covers (norms and biases only): one recipe class and one registry entry,
    defined here; the loop trains and exports it without knowing it."""

    @dataclasses.dataclass
    class NormsAndBiases(recipes.Recipe):
        name = "norms_and_biases"

        def choose(self, ctx):
            params = [p for n, p in ctx.model.named_parameters() if "norm" in n or n.endswith(".bias")]
            return Trainable(params=params, other_count=sum(numel(p) for p in params))  # partitioned: ds_numel

    monkeypatch.setitem(recipes.RECIPES, NormsAndBiases.name, NormsAndBiases)
    entry = Method("norms_tuning", "stage 2 on the norms and biases", {"stage2": StageRule("norms_and_biases",
                                                                                          "evidence")})
    monkeypatch.setitem(methods.METHODS, entry.name, entry)
    cfg = load_config(training_workspace(str(tmp_path)), ["--stage2.method", "norms_tuning",
                                                          "--stage2.init_from", str(tmp_path / "model")])
    summary = run_stage("stage2", cfg)
    before = load_file(str(tmp_path / "model" / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "stage2" / "export" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("norm" in k for k in changed)
    assert summary["trainable_params"] == sum(v.numel() for k, v in before.items() if "norm" in k)


@pytest.mark.parametrize("method, transposed", [("neurorit_release_masks", False),
                                                 ("release_masks_transposed", True)])
def test_the_release_masks_variant_trains_exactly_the_released_positions(tmp_path, single_rank_env, method,
                                                                         transposed):
    """neurorit_release_masks, stage 1 (every layer masked, the release's stage-1 rule), run by the loop under the
    workspace's ZeRO-3 config, which the recipe lowers to ZeRO-2: the export differs from the base only at the
    positions the release's reshaped masks let train, and differs there; its control with the masks transposed
    as meant, only at the neurons' own rows and columns."""
    from model_patches.release_masks import release_model_masks

    config = training_workspace(str(tmp_path))
    summary = run_stage("stage1", load_config(config, ["--stage1.method", method]))
    base = load_file(str(tmp_path / "model" / "model.safetensors"))
    tuned = load_file(str(tmp_path / "out" / "stage1" / "export" / "model.safetensors"))
    nmap = NeuronMap.load(str(tmp_path / "out" / "mining"))
    neurons = {layer: ids for layer, ids in nmap.per_layer("irrelevant_only").items()}
    masks = release_model_masks(neurons, 2, HIDDEN, 128, "stage1", transposed=transposed)
    assert summary["trainable_params"] == sum(int(m.sum()) for roles in masks.values() for m in roles.values())
    moved = 0
    for key in base:
        changed = base[key] != tuned[key]
        if ".mlp." not in key:
            assert not changed.any(), key
            continue
        layer, role = int(key.split(".")[2]), key.split(".")[4].split("_")[0]
        assert not (changed & ~masks[layer][role]).any(), key  # nothing outside the release's positions
        moved += int(changed.sum())
    assert moved > 0.5 * summary["trainable_params"]
