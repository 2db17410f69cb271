"""A bf16 export keeps what training learned (issue 20, item 1).

The neuron deltas of a bf16 model are folded into its weights at export. Folded and rounded back to bf16, a small
delta is partly lost; ``export_hf`` writes such weights in fp32 and says so in ``config.json``. The comparison is
of the *learned change*: logits of the reloaded export minus the base model's, against the patched model's minus
the base model's, all evaluated in fp32 so that only the export's rounding can differ.
"""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from model_patches import export_hf, patch_model
from model_patches.export import LOST_TOLERANCE
from tests.support.models import tiny_inputs, tiny_model

torch.set_num_threads(1)
NEURONS = {0: [1, 7, 100], 1: [0, 64, 127]}  # MoE ids are expert * 128 + index: experts 0 and 1 here


def bf16_patched(family: str, delta_scale: float):
    """A bf16 tiny model (weights ~0.08) with trained-looking neuron deltas of ``delta_scale``, and its base logits
    in fp32 (computed before the deltas exist)."""
    model = cast_parameters(tiny_model(family), torch.bfloat16)
    model.config.dtype = torch.bfloat16  # as after from_pretrained(dtype=torch.bfloat16)
    x = tiny_inputs()
    base = fp32_logits(model, x)
    patcher = patch_model(model)
    params = patcher.add_neuron_deltas({layer: torch.tensor(ids) for layer, ids in NEURONS.items()})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.copy_(delta_scale * torch.randn(p.shape, generator=gen))
    return model, x, base


def cast_parameters(model, dtype: torch.dtype):
    """``model`` with its parameters (not its buffers: RoPE frequencies stay fp32, as after a bf16 load) in
    ``dtype``."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model


def fp32_logits(model, x) -> torch.Tensor:
    """Logits of ``model`` computed in fp32 (the bf16 values upcast exactly), its dtype restored after."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        out = cast_parameters(model, torch.float32)(x).logits
    cast_parameters(model, dtype)
    return out


def change_error(got: torch.Tensor, want: torch.Tensor, base: torch.Tensor) -> float:
    """How far ``got`` is from ``want``, as a share of the learned change ``want - base``."""
    return float((got - want).norm() / (want - base).norm())


@pytest.mark.parametrize("family", ["llama", "phi3", "mixtral"])
def test_bf16_export_keeps_small_deltas_in_fp32(family, tmp_path):
    model, x, base = bf16_patched(family, delta_scale=1e-3)
    want = fp32_logits(model, x)  # what training saw: bf16 weights + the delta path at full size
    export_hf(model, str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    note = config["neurorit_export"]
    assert config["dtype"] == "float32" and note["model_dtype"] == "bfloat16"
    assert note["weights_in_float32"] >= 2 and note["lost_if_rounded"] > LOST_TOLERANCE
    assert next(model.parameters()).dtype == torch.bfloat16 and "neurorit_export" not in model.config.to_dict()
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert next(loaded.parameters()).dtype == torch.float32  # the default dtype="auto" follows config.json
    assert change_error(fp32_logits(loaded, x), want, base) < 1e-3
    rounded = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.bfloat16,
                                                   attn_implementation="eager").eval()
    assert change_error(fp32_logits(rounded, x), want, base) > 0.05  # what a bf16 fold (the old export) kept


def test_bf16_export_stays_bf16_when_rounding_keeps_the_change(tmp_path):
    model, x, base = bf16_patched("llama", delta_scale=0.3)
    want = fp32_logits(model, x)
    export_hf(model, str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "neurorit_export" not in config
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert change_error(fp32_logits(loaded, x), want, base) < 5 * LOST_TOLERANCE


def test_loading_such_an_export_in_bf16_says_it_loses_the_change(tmp_path, capsys, single_rank_env):
    from model_patches import load_causal_lm

    model, _, _ = bf16_patched("llama", delta_scale=1e-3)
    export_hf(model, str(tmp_path))
    load_causal_lm(str(tmp_path), "float32", "eager", device="cpu")
    assert "warning" not in capsys.readouterr().err
    load_causal_lm(str(tmp_path), "bfloat16", "eager", device="cpu")
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warned) == 1 and "use model.dtype float32 to keep it" in warned[0]
