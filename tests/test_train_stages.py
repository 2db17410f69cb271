"""Whole stages in this process (ZeRO-3, world of one): what trains and what stays bitwise frozen, resume equals an
uninterrupted run, a checkpoint of another neuron map is refused, baselines and ``none`` run."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from neurorit.config import load_config
from neurorit.errors import UserError
from model_patches import model_fingerprint
from neurorit.neuron_map import NeuronMap
from neurorit.run_layout import StageFiles
from tests.support.workspaces import GROUPS, TARGET_LAYERS, layout_paths, scalars, training_workspace, unnamed_files
from train.loop import run_stage

FFN = ("gate_proj", "up_proj", "down_proj")


def weights(folder: str) -> dict:
    return load_file(os.path.join(folder, "model.safetensors"))


def trained_slices(spec: dict, full_layers: list) -> dict:
    """name -> bool mask of the entries that must change (everything else must stay bitwise equal)."""
    masks = {}
    for layer in range(2):
        prefix = f"model.layers.{layer}.mlp."
        shape = {"gate_proj": (128, 64), "up_proj": (128, 64), "down_proj": (64, 128)}
        for proj in FFN:
            mask = torch.zeros(shape[proj], dtype=torch.bool)
            if layer in full_layers:
                mask[:] = True
            for neuron in spec.get(layer, []):
                if proj == "down_proj":
                    mask[:, neuron] = True
                else:
                    mask[neuron] = True
            masks[prefix + proj + ".weight"] = mask
    return masks


def assert_only(before: dict, after: dict, masks: dict) -> None:
    assert before.keys() == after.keys()
    for name, old in before.items():
        mask = masks.get(name, torch.zeros_like(old, dtype=torch.bool))
        new = after[name]
        assert torch.equal(new[~mask], old[~mask]), f"{name} changed outside the trainable set"
        if mask.any():
            assert (new[mask] != old[mask]).float().mean() > 0.99, f"{name}: trainable entries did not change"


@pytest.fixture
def workspace(tmp_path, single_rank_env):
    return training_workspace(str(tmp_path))


def test_workspace_is_consistent(tmp_path):
    from neurorit.records import load_records
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config(training_workspace(str(tmp_path)))
    assert len(load_records(cfg.data.train_file)) == 16
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path)
    assert AutoTokenizer.from_pretrained(cfg.model.path).vocab_size == model.config.vocab_size
    NeuronMap.load(os.path.join(cfg.runtime.output_dir, "mining")).check_fingerprint(model_fingerprint(model))


def test_stages_train_exactly_their_sets(workspace):
    cfg = load_config(workspace)
    s1 = run_stage("stage1", cfg)
    stage1_spec = {}
    for layer, neuron in GROUPS["irrelevant_only"]:
        stage1_spec.setdefault(layer, []).append(neuron)
    exported1 = weights(s1["export_dir"])
    assert_only(weights(cfg.model.path), exported1, trained_slices(stage1_spec, []))
    assert s1["trainable_params"] == 3 * 64 * len(GROUPS["irrelevant_only"])
    assert s1["trainable"] == {"delta_params": s1["trainable_params"], "ffn_params": 0, "other_params": 0,
                               "neurons": {str(k): v for k, v in sorted(stage1_spec.items())}, "ffn_layers": []}

    s2 = run_stage("stage2", cfg)
    assert s2["init_from"] == s1["export_dir"]
    stage2_spec = {}
    for rows in GROUPS.values():
        for layer, neuron in rows:
            if layer not in TARGET_LAYERS:
                stage2_spec.setdefault(layer, []).append(neuron)
    assert_only(exported1, weights(s2["export_dir"]), trained_slices(stage2_spec, TARGET_LAYERS))
    assert os.path.isfile(os.path.join(os.path.dirname(s2["export_dir"]), "config.yaml"))


def test_resume_equals_uninterrupted_and_refuses_another_map(workspace, tmp_path):
    straight = load_config(workspace, ["--stage1.max_steps", "4", "--stage1.save_every", "2",
                                       "--stage1.output_dir", str(tmp_path / "straight")])
    done = run_stage("stage1", straight)
    split = load_config(workspace, ["--stage1.max_steps", "4", "--stage1.save_every", "2",
                                    "--stage1.output_dir", str(tmp_path / "split")])
    first = run_stage("stage1", split, stop_after=2)
    assert first == {"stage": "stage1", "step": 2, "total_steps": 4, "finished": False}

    mining = os.path.join(split.runtime.output_dir, "mining")
    other = load_config(workspace, ["--mining.output_dir", str(tmp_path / "other_map"),
                                    "--stage1.max_steps", "4", "--stage1.output_dir", str(tmp_path / "split")])
    nmap = NeuronMap.load(mining)
    nmap.groups["irrelevant_only"] = nmap.groups["irrelevant_only"][:3]
    nmap.save(other.mining.output_dir)
    with pytest.raises(UserError, match="neuron_map_hash"):
        run_stage("stage1", other)
    with pytest.raises(UserError, match="seed"):  # the identity holds the seed and the starting model too
        run_stage("stage1", load_config(workspace, ["--stage1.max_steps", "4", "--runtime.seed", "1",
                                                     "--stage1.output_dir", str(tmp_path / "split")]))
    state_file = tmp_path / "split" / "checkpoints" / "step2" / "trainer_state.json"
    assert json.loads(state_file.read_text())["world_size"] == 1  # another world size resumes: test_resume_other_world

    resumed = run_stage("stage1", split)
    assert resumed["step"] == 4
    again = run_stage("stage1", split)  # resumed at its final step (as after a kill before the export)
    assert again["step"] == 4 and again["final_loss"] == resumed["final_loss"] is not None
    a, b = weights(done["export_dir"]), weights(resumed["export_dir"])
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    logged_a, logged_b = (scalars(StageFiles(str(tmp_path / run)).tensorboard) for run in ("straight", "split"))
    for tag in ("train/loss", "train/lr"):
        assert [s for s, _ in logged_b[tag]] == [s for s, _ in logged_a[tag]] == [1, 2, 3, 4]
        assert [v for _, v in logged_b[tag]] == pytest.approx([v for _, v in logged_a[tag]], abs=1e-6)


def test_robust_sft_trains_everything_and_none_reexports(workspace):
    cfg = load_config(workspace, ["--stage2.method", "robust_sft", "--stage2.init_from",
                                  load_config(workspace).model.path, "--stage2.max_steps", "1"])
    out = run_stage("stage2", cfg)
    base = weights(cfg.model.path)
    assert out["trainable_params"] == sum(t.numel() for t in base.values())
    cfg = load_config(workspace, ["--stage1.method", "none"])
    out = run_stage("stage1", cfg)
    assert all(torch.equal(base[k], v) for k, v in weights(out["export_dir"]).items())


def test_zero0_8bit_adamw_with_accumulation(workspace):
    cfg = load_config(workspace, ["--stage1.zero_stage", "0", "--stage1.optimizer", "adamw_8bit",
                                  "--stage1.micro_batch_size", "1", "--stage1.schedule", "cosine",
                                  "--stage1.max_steps", "2"])
    out = run_stage("stage1", cfg)
    files = StageFiles(os.path.dirname(out["export_dir"]))
    logged = scalars(files.tensorboard)
    assert all(v > 0 for _, v in logged["train/grad_norm"])
    assert unnamed_files(files.root, layout_paths(files)) == []  # every file of the stage is the layout's
    assert not torch.equal(weights(out["export_dir"])["model.layers.0.mlp.down_proj.weight"],
                           weights(cfg.model.path)["model.layers.0.mlp.down_proj.weight"])
