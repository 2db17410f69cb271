"""Tiny evaluation fixtures shared by ``tests/test_evaluate*.py`` and the 2-rank script (no hub, no network).

``make_checkpoint(dir)``: a random 2-layer Llama over the embedded word-level tokenizer, saved with that
tokenizer in Hugging Face format; its end-of-sequence row is boosted so that generations stop at different
lengths. ``make_records(path)``: a few test questions of the embedded benchmark (world and fresh kinds, with
counterfactual passages). ``write_config(dir, ...)``: an experiment YAML pointing at them with tiny eval sizes.
"""
from __future__ import annotations

import os

import torch
import yaml


def make_tokenizer():
    from benchmarks.embedded.tokenizer import build_tokenizer
    from benchmarks.embedded.world import World

    return build_tokenizer(World(0))


def make_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32):
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(cfg)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        model.lm_head.weight[tokenizer.eos_token_id] *= 4.0  # EOS wins for some contexts: ragged stops
    return model.float().eval()


def make_checkpoint(directory: str, seed: int = 0) -> str:
    tok = make_tokenizer()
    model = make_model(tok, seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def make_records(path: str, n_questions: int = 60) -> str:
    from benchmarks.embedded.benchmark import build_benchmark
    from neurorit.records import write_records

    write_records(build_benchmark(seed=0, n_questions=n_questions)["test"], path)
    return path


def write_config(directory: str, test_file: str, model_path: str, batch_size: int = 4,
                 max_new_tokens: int = 6, instruction: str = "two_step") -> str:
    cfg = {
        "model": {"path": model_path, "attn_implementation": "auto"},
        "data": {"test_file": test_file, "prompt_style": "compact", "num_docs": 5, "max_length": 128},
        "eval": {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "bootstrap": 200,
                 "instruction": instruction},
        "runtime": {"output_dir": os.path.join(directory, "run"), "torch_threads": 1, "seed": 0},
    }
    path = os.path.join(directory, "eval.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return path
