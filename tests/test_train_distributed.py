"""Real 2-rank ZeRO-3 (``deepspeed --num_gpus 2`` on CPU/gloo): stage 1 then stage 2 through the entry scripts (in
one launch, see ``dist_scripts/train_two_stages.py``); the exports load in plain transformers; TensorBoard events
come from rank 0 only and hold the listed scalars; stage 2 prints its trainable count, equal to the formula."""
import glob
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from neurorit.run_layout import StageFiles
from tests.support.workspaces import GROUPS, TARGET_LAYERS, scalars, training_workspace

TAGS = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/trainable_params", "dev/loss"}


@pytest.mark.distributed
def test_two_rank_zero3_stage1_then_stage2(tmp_path, run_ranks):
    config = training_workspace(str(tmp_path), n_train=16, stage_overrides={"eval_every": 2, "eval_examples": 5})
    printed = run_ranks("tests/dist_scripts/train_two_stages.py", "--config", config).stdout  # asserts exit 0
    outside = sum(1 for rows in GROUPS.values() for layer, _ in rows if layer not in TARGET_LAYERS)
    expected = 3 * 64 * outside + 3 * 64 * 128 * len(TARGET_LAYERS)
    assert f"trainable parameters: {expected:,} =" in printed

    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).eval()
    tokens = torch.tensor([[2, 5, 9, 14, 20, 7]])
    previous = base
    for stage in ("stage1", "stage2"):
        folder = tmp_path / "out" / stage
        events = glob.glob(os.path.join(StageFiles(str(folder)).tensorboard, "*tfevents*"))
        assert len(events) == 1, events  # one writer: rank 0
        logged = scalars(StageFiles(str(folder)).tensorboard)
        assert TAGS <= set(logged)
        assert [s for s, _ in logged["train/loss"]] == [1, 2, 3]
        model = AutoModelForCausalLM.from_pretrained(str(folder / "export")).eval()
        with torch.no_grad():
            assert (model(tokens).logits - previous(tokens).logits).abs().max() > 1e-4
        previous = model
        assert (folder / "export" / "tokenizer.json").is_file()
    assert logged["train/trainable_params"][0][1] == expected


@pytest.mark.distributed
def test_two_rank_zero3_stage2_with_frozen_gates(tmp_path, run_ranks):
    """``stage2.train_gate false`` under ZeRO-3: the export's gate projections are the input's, bit for bit, and
    its up / down projections moved."""
    config = training_workspace(str(tmp_path), n_train=8, stage_overrides={"train_gate": False})
    printed = run_ranks("train/stage2.py", "--config", config, "--stage2.init_from", str(tmp_path / "model")).stdout
    outside = sum(1 for rows in GROUPS.values() for layer, _ in rows if layer not in TARGET_LAYERS)
    assert f"trainable parameters: {2 * 64 * outside + 2 * 64 * 128 * len(TARGET_LAYERS):,} =" in printed
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "stage2" / "export")).state_dict()
    gates = [k for k in base if "gate_proj" in k]
    assert gates and all(torch.equal(base[k], tuned[k]) for k in gates)
    ups = [k for k in base if "up_proj" in k or "down_proj" in k]
    assert any(not torch.equal(base[k], tuned[k]) for k in ups)
