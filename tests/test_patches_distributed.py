"""Export and in-place merge under real 2-rank ZeRO-3 (``deepspeed --num_gpus 2`` on CPU/gloo): plain transformers reloads it."""
import pytest
import torch
from transformers import AutoModelForCausalLM

FAMILIES = ("llama", "mixtral")


@pytest.mark.distributed
def test_zero3_export_round_trip(tmp_path, run_ranks, tiny_model):
    models = []
    for family in FAMILIES:
        path = tmp_path / f"base-{family}"
        tiny_model(family, intermediate=128 if family == "mixtral" else 512).save_pretrained(str(path))
        models += ["--model", f"{family}={path}"]
    out = tmp_path / "out"
    run_ranks("tests/dist_scripts/patches_export.py", *models, "--out", out, timeout=240)  # asserts exit 0
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
