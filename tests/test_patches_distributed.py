"""Export and in-place merge under real 2-rank ZeRO-3 (``deepspeed --num_gpus 2`` on CPU/gloo): plain transformers reloads it."""
import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from helpers_tiny_models import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("llama", "mixtral")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_zero3_export_round_trip(tmp_path):
    models = []
    for family in FAMILIES:
        path = tmp_path / f"base-{family}"
        tiny_model(family, intermediate=128 if family == "mixtral" else 512).save_pretrained(str(path))
        models += ["--model", f"{family}={path}"]
    out = tmp_path / "out"
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [launcher, "--num_gpus", "2", "--master_port", str(free_port()),
           os.path.join(ROOT, "tests", "dist_scripts", "patches_export.py"), *models, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for family in FAMILIES:
        saved = torch.load(out / f"{family}.logits.pt")
        assert (out / family / "model.safetensors.index.json").is_file()  # sharded
        loaded = AutoModelForCausalLM.from_pretrained(str(out / family), attn_implementation="eager").eval()
        with torch.no_grad():
            got = loaded(saved["tokens"]).logits
        assert (got - saved["logits"]).abs().max() < 1e-5, family
        assert (saved["merged"] - saved["logits"]).abs().max() < 1e-5, family
        trained = tiny_model(family, intermediate=128 if family == "mixtral" else 512)
        with torch.no_grad():  # deltas trained and deactivation folded: the weights really moved
            assert (trained(saved["tokens"]).logits - got).abs().max() > 1e-3
