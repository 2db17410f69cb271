"""Tiny random causal LMs of every supported family, built from configs (no hub, no network).

Shared by every test suite: ``tiny_model(family, seed=0, layers=2, hidden=64, intermediate=128, vocab=97)``
returns an fp32 model in eval mode whose weights depend only on ``seed``; ``TINY_FAMILIES`` lists the families.
MoE families (mixtral, qwen2_moe) get 4 experts with 2 active per token, each expert ``intermediate`` wide.
"""
from __future__ import annotations

import torch
import transformers as tf

TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "mixtral", "qwen2_moe")
MOE_FAMILIES = ("mixtral", "qwen2_moe")


def tiny_config(family: str, layers: int = 2, hidden: int = 64, intermediate: int = 128, vocab: int = 97,
                attn_implementation: str = "eager") -> tf.PretrainedConfig:
    """The config of a tiny ``family`` model (4 heads, 2 KV heads, fp32)."""
    heads = 4
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    if family == "llama":
        cfg = tf.LlamaConfig(**common)
    elif family == "mistral":
        cfg = tf.MistralConfig(**common, sliding_window=None)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(**common)
    elif family == "qwen3":
        cfg = tf.Qwen3Config(**common, head_dim=hidden // heads)
    elif family == "gemma":
        cfg = tf.GemmaConfig(**common, head_dim=hidden // heads)
    elif family == "gemma2":
        cfg = tf.Gemma2Config(**common, head_dim=hidden // heads, sliding_window=64)
    elif family == "phi3":
        cfg = tf.Phi3Config(**common)
    elif family == "mixtral":
        cfg = tf.MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2)
    elif family == "qwen2_moe":
        cfg = tf.Qwen2MoeConfig(**common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=intermediate,
                                shared_expert_intermediate_size=intermediate, decoder_sparse_step=1)
    else:
        raise ValueError(f"unknown tiny family {family!r}; choose from {', '.join(TINY_FAMILIES)}")
    cfg._attn_implementation = attn_implementation
    return cfg


def tiny_model(family: str, seed: int = 0, layers: int = 2, hidden: int = 64, intermediate: int = 128,
               vocab: int = 97, attn_implementation: str = "eager") -> tf.PreTrainedModel:
    """A tiny randomly initialised ``family`` causal LM (fp32, eval mode); same seed, same weights."""
    cfg = tiny_config(family, layers, hidden, intermediate, vocab, attn_implementation)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    with torch.no_grad():  # small random init of every tensor so all code paths see non-trivial numbers
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if "norm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    return model.float().eval()


def tiny_inputs(batch: int = 2, seq: int = 7, vocab: int = 97, seed: int = 0) -> torch.Tensor:
    """Random token ids ``[batch, seq]`` (never the pad id 0)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, seq), generator=gen)
