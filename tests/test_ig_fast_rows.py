"""Fast IG with rows that start at their own layer (the staircase sweep over the shared prefix cache).

Fast == reference for every family (one scored token, and a teacher-forced word of three tokens whose rows carry
the two after the scaled one), SmolLM2-135M's config (random weights, 2 layers), chunk layouts that cut a layer's
steps, a one-token prompt, sdpa models; each row runs only from its own layer; the model is left as found.
"""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from attribution.ig import integrated_gradients
from attribution.ig_common import IGInput, IGOptions
from attribution.ig_fast import ATTN_NAME, row_chunks
from attribution.targets import TARGETS
from model_patches.patcher import patch_model
from tests.support.models import TINY_FAMILIES, tiny_model

torch.set_num_threads(1)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _prompt(n: int = 24, q: int = 9, vocab: int = 97, seed: int = 7):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=gen), torch.randint(3, vocab, (q,), generator=gen)


def _check(model, prompt, query, options, target=TARGETS["yes_prob"]((11,)), tol=1e-4):
    """``target`` after ``prompt`` (its continuation tokens appended): fast == reference."""
    patcher = patch_model(model)
    inp = IGInput(torch.cat([prompt, torch.tensor(target.continuation, dtype=prompt.dtype)]), query, target)
    ref = integrated_gradients(model, patcher, inp, options, "reference")
    fast = integrated_gradients(model, patcher, inp, options, "fast")
    assert _rel_err(fast.attributions, ref.attributions) <= tol
    assert abs(fast.f_input - ref.f_input) <= 1e-5 * max(1.0, abs(ref.f_input))
    assert torch.allclose(fast.f_baseline, ref.f_baseline, rtol=1e-4, atol=1e-7)
    return fast


def smollm2_model(layers: int = 2, seed: int = 0) -> tf.PreTrainedModel:
    """SmolLM2-135M's config (9 heads / 3 KV heads, head 64, tied embeddings) with ``layers`` layers, random init
    (the vocabulary trimmed to 512 to keep the test fast; every other field as the real model)."""
    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                         rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192, hidden_act="silu")
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").float().eval()


@pytest.mark.parametrize("word", [(11,), (11, 40, 5)])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_three_layers_chunks_cut_layers(family, word):
    """3 layers x 5 steps in chunks of 4: chunks start mid-layer and span layers."""
    model = tiny_model(family, layers=3).requires_grad_(False)
    prompt, query = _prompt()
    _check(model, prompt, query, IGOptions(steps=5, chunk_rows=4), TARGETS["yes_prob"].of(list(word)))


@pytest.mark.parametrize("rule", ["standard", "ircan"])
@pytest.mark.parametrize("target,tokens", [("yes_prob", (17,)), ("answer_logprob", (17,)),
                                           ("answer_seq_logprob", (17, 300, 4, 99))])
def test_smollm2_config_two_layers(rule, target, tokens):
    model = smollm2_model(layers=2).requires_grad_(False)
    prompt, query = _prompt(40, 12, vocab=512)
    _check(model, prompt, query, IGOptions(steps=6, ig_rule=rule, chunk_rows=7), TARGETS[target].of(list(tokens)))


@pytest.mark.parametrize("chunk_rows", [1, 3, 10, 1000])
def test_chunk_layouts_agree_with_reference(chunk_rows):
    model = tiny_model("llama", layers=4).requires_grad_(False)
    prompt, query = _prompt()
    _check(model, prompt, query, IGOptions(steps=5, chunk_rows=chunk_rows))


@pytest.mark.parametrize("family", ["llama", "phi3", "qwen2_moe"])
def test_sdpa_models(family):
    model = tiny_model(family, layers=2, attn_implementation="sdpa").requires_grad_(False)
    prompt, query = _prompt()
    _check(model, prompt, query, IGOptions(steps=4, chunk_rows=5))


def test_one_token_prompt_and_zero_baseline():
    model = tiny_model("llama", layers=2).requires_grad_(False)
    prompt, _ = _prompt(1)
    _check(model, prompt, None, IGOptions(steps=4, chunk_rows=3))


def test_rows_start_at_their_own_layer():
    """At layer j a chunk runs exactly its rows of layers <= j; layers below its first row do not run."""
    layers, steps, chunk_rows = 4, 3, 5
    model = tiny_model("llama", layers=layers).requires_grad_(False)
    patcher = patch_model(model)
    prompt, query = _prompt()
    seen: list[tuple[int, int]] = []
    hooks = [layer.mlp.register_forward_hook(lambda m, a, o, j=j: seen.append((j, a[0].shape[0])))
             for j, layer in enumerate(model.model.layers)]
    try:
        integrated_gradients(model, patcher, IGInput(prompt, query, TARGETS["yes_prob"]((11,))),
                             IGOptions(steps=steps, chunk_rows=chunk_rows))
    finally:
        for h in hooks:
            h.remove()
    expected = []
    for chunk in row_chunks(layers, steps, chunk_rows):
        first = chunk[0][0]
        expected += [(j, sum(1 for layer, _ in chunk if layer <= j)) for j in range(first, layers)]
    # seen: the prefill, the query-only baseline, the unscaled last-token pass (1 row, all layers), the chunks
    assert seen == [(j, 1) for j in range(layers)] * 3 + expected
    assert sum(n for _, n in expected) == steps * sum(layers - l for l in range(layers))


def test_model_left_as_found_even_after_an_error():
    model = tiny_model("qwen2", layers=2).requires_grad_(False)
    patcher = patch_model(model)
    impl = model.config._attn_implementation
    prompt, query = _prompt()
    with pytest.raises(IndexError):  # a target token outside the vocabulary fails inside the row passes
        integrated_gradients(model, patcher, IGInput(prompt, query, TARGETS["yes_prob"]((10**6,))),
                             IGOptions(steps=2, chunk_rows=4))
    assert model.config._attn_implementation == impl != ATTN_NAME
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)
    assert patcher.scaled == {}
    ids = prompt.view(1, -1)
    out = model(input_ids=ids).logits  # plain forward still works and is unchanged
    assert torch.equal(out, model(input_ids=ids).logits)


@pytest.mark.parametrize("kind", ["yes_prob", "answer_logprob"])
def test_fused_target_equals_value(kind):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(5, 300, generator=gen)).requires_grad_(True)
    target = TARGETS[kind]((42,))
    a = target.fused_value(logits.view(5, 1, 300))
    (ga,) = torch.autograd.grad(a.sum(), logits)
    b = target.value(logits.view(5, 1, 300))
    (gb,) = torch.autograd.grad(b.sum(), logits)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert torch.allclose(ga, gb, rtol=1e-5, atol=1e-7)
