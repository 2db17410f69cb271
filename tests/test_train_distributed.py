"""Real 2-rank ZeRO-3 (``deepspeed --num_gpus 2`` on CPU/gloo): stage 1 then stage 2 through the entry scripts (in
one launch, see ``dist_scripts/train_two_stages.py``); the exports load in plain transformers; TensorBoard events
come from rank 0 only and hold the listed scalars; stage 2 prints its trainable count, equal to the formula."""
import glob
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from test_train_fixtures import GROUPS, TARGET_LAYERS, free_port, make_workspace  # noqa: E402
from test_train_stages import scalars  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAGS = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/trainable_params", "dev/loss"}


def launch(config: str) -> str:
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    script = os.path.join(ROOT, "tests", "dist_scripts", "train_two_stages.py")
    cmd = [launcher, "--num_gpus", "2", "--master_port", str(free_port()), script, "--config", config]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.distributed
def test_two_rank_zero3_stage1_then_stage2(tmp_path):
    config = make_workspace(str(tmp_path), n_train=16, stage_overrides={"eval_every": 2, "eval_examples": 5})
    printed = launch(config)
    outside = sum(1 for rows in GROUPS.values() for layer, _ in rows if layer not in TARGET_LAYERS)
    expected = 3 * 64 * outside + 3 * 64 * 128 * len(TARGET_LAYERS)
    assert f"trainable parameters: {expected:,} =" in printed

    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).eval()
    tokens = torch.tensor([[2, 5, 9, 14, 20, 7]])
    previous = base
    for stage in ("stage1", "stage2"):
        folder = tmp_path / "out" / stage
        events = glob.glob(str(folder / "tb" / "*tfevents*"))
        assert len(events) == 1, events  # one writer: rank 0
        logged = scalars(str(folder / "tb"))
        assert TAGS <= set(logged)
        assert [s for s, _ in logged["train/loss"]] == [1, 2, 3]
        model = AutoModelForCausalLM.from_pretrained(str(folder / "export")).eval()
        with torch.no_grad():
            assert (model(tokens).logits - previous(tokens).logits).abs().max() > 1e-4
        previous = model
        assert (folder / "export" / "tokenizer.json").is_file()
    assert logged["train/trainable_params"][0][1] == expected
