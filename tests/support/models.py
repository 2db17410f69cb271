"""Tiny random causal LMs of every supported family, built from configs, and word-level tokenizers (no hub, no
network).

``tiny_model(family, seed=0, layers=2, hidden=64, intermediate=128, vocab=97)`` returns an fp32 model in eval mode
whose weights depend only on ``seed``; ``TINY_FAMILIES`` lists the families. MoE families (mixtral, qwen2_moe) get
4 experts with 2 active per token, each expert ``intermediate`` wide. Given ``tokenizer``, the vocabulary and the
pad/bos/eos ids come from it. ``word_tokenizer(words)`` is a closed word-level vocabulary.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Iterable

import torch
import transformers as tf

TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "mixtral", "qwen2_moe")
MOE_FAMILIES = ("mixtral", "qwen2_moe")


def tiny_config(family: str, layers: int = 2, hidden: int = 64, intermediate: int = 128, vocab: int = 97,
                attn_implementation: str = "eager", tokenizer=None, max_positions: int = 256) -> tf.PretrainedConfig:
    """The config of a tiny ``family`` model (4 heads, 2 KV heads, fp32); ids and vocabulary from ``tokenizer``."""
    heads = 4
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if tokenizer is not None:
        vocab = len(tokenizer)
        ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=max_positions,
                  tie_word_embeddings=False, **ids)
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
               vocab: int = 97, attn_implementation: str = "eager", *, tokenizer=None, max_positions: int = 256,
               scale: float = 0.08, norm_noise: float | None = 0.1) -> tf.PreTrainedModel:
    """A tiny randomly initialised ``family`` causal LM (fp32, eval mode); same seed, same weights.

    Every weight is ``scale * N(0, 1)``; norm weights are ``1 + norm_noise * N(0, 1)``, or left at one (and skipped
    by the random stream) when ``norm_noise`` is None."""
    cfg = tiny_config(family, layers, hidden, intermediate, vocab, attn_implementation, tokenizer, max_positions)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    with torch.no_grad():  # small random init of every tensor so all code paths see non-trivial numbers
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if "norm" in name or "layernorm" in name:
                if norm_noise is not None:
                    p.copy_(1.0 + norm_noise * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=gen))
    return model.float().eval()


def tiny_inputs(batch: int = 2, seq: int = 7, vocab: int = 97, seed: int = 0) -> torch.Tensor:
    """Random token ids ``[batch, seq]`` (never the pad id 0)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, seq), generator=gen)


def word_tokenizer(words: Iterable[str] = (), texts: Iterable[str] = ()) -> tf.PreTrainedTokenizerFast:
    """A closed word-level tokenizer, saved and reloaded like any checkpoint's: the embedded model's vocabulary
    without a world (``<pad> <unk> <s> </s>``, then every word the compact prompts write), then ``words``, then
    every piece of ``texts`` (split at white space and punctuation, so texts in any prompt style tokenize)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from benchmarks.embedded.tokenizer import build_tokenizer

    words = list(words)
    if not texts:
        return build_tokenizer(SimpleNamespace(words=lambda: words))
    vocab = dict(build_tokenizer(SimpleNamespace(words=lambda: words)).get_vocab())
    split = pre_tokenizers.Whitespace()
    for text in texts:
        for piece, _ in split.pre_tokenize_str(text):
            vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = split
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>", clean_up_tokenization_spaces=False)
