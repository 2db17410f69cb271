"""SmolLM2-135M-Instruct's shape (random weights, 2 of its 30 layers, no download): the fast IG equals the
reference IG; the patcher finds its FFN (576 -> 1536, GQA 9 / 3 heads, tied embeddings)."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from attribution.ig import integrated_gradients
from attribution.ig_common import IGInput, IGOptions
from attribution.targets import TARGETS
from model_patches import patch_model

# config.json of outputs/models/smollm2-135m-instruct (scripts/get_real_model.py), num_hidden_layers 30 -> 2
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_act="silu",
               max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
               bos_token_id=1, eos_token_id=2, pad_token_id=2, attention_bias=False, mlp_bias=False)


def smollm2_shaped(layers: int = 2, seed: int = 0) -> tf.LlamaForCausalLM:
    cfg = tf.LlamaConfig(**{**SMOLLM2, "num_hidden_layers": layers})
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM._from_config(cfg, attn_implementation="eager").float().eval()
    return model.requires_grad_(False)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def model():
    return smollm2_shaped()


def test_shape(model):
    assert model.model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()  # tied
    patcher = patch_model(model)
    assert patcher.num_layers == 2 and patcher.intermediate_size == 1536


@pytest.mark.parametrize("target,baseline,rule", [("yes_prob", "query", "standard"),
                                                  ("answer_logprob", "zero", "standard"),
                                                  ("yes_prob", "query", "ircan")])
def test_fast_ig_equals_reference(model, target, baseline, rule):
    patcher = patch_model(model)
    gen = torch.Generator().manual_seed(11)
    prompt = torch.randint(3, 49152, (40,), generator=gen)
    query = torch.randint(3, 49152, (14,), generator=gen)
    inp = IGInput(prompt, query if baseline == "query" else None, TARGETS[target]((2097,)))
    options = IGOptions(steps=6, ig_rule=rule, chunk_rows=5)
    ref = integrated_gradients(model, patcher, inp, options, "reference")
    fast = integrated_gradients(model, patcher, inp, options, "fast")
    assert ref.attributions.shape == (2, 1536)
    assert _rel_err(fast.attributions, ref.attributions) <= 1e-4
    assert abs(fast.f_input - ref.f_input) <= 1e-5 * max(1.0, abs(ref.f_input))
    assert torch.allclose(fast.f_baseline, ref.f_baseline, rtol=1e-4, atol=1e-7)
