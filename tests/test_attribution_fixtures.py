"""Fixtures (no tests) for the attribution tests: a tiny random model + word-level tokenizer saved to a folder, a tiny
mining JSONL (with an empty passage and an over-long one), and a config YAML pointing at both."""
from __future__ import annotations

import json
import os
import random

import yaml

from helpers_tiny_models import tiny_model

WORDS = ("alpha beta gamma delta omega kappa sigma theta lambda zeta red blue green black white city river "
         "mountain born in lives capital of is the who what where").split()
TEMPLATE = "verify doc : question proposed reply yes no qa answer".split()


def make_tokenizer(directory: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + TEMPLATE + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(directory)
    return fast


def write_records(path: str, n: int, seed: int = 0) -> None:
    """``n`` records; record 2 has an empty irrelevant passage, record 4 a passage far longer than the context."""
    rng = random.Random(seed)
    names, values = WORDS[:10], WORDS[10:18]
    with open(path, "w") as fh:
        for i in range(n):
            who, val = rng.choice(names), rng.choice(values)
            noise = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))
            gold = f"{who} {rng.choice(['lives in', 'is born in'])} the {val} city"
            if i == 4:
                gold = gold + " " + " ".join(rng.choice(WORDS) for _ in range(80))
            ctxs = [{"title": "", "text": gold, "has_answer": True}, {"title": "", "text": noise, "has_answer": False}]
            if i == 2:
                ctxs.append({"title": "", "text": "", "has_answer": False})
            fh.write(json.dumps({"id": f"q{i}", "question": f"where {who} lives", "answers": [val], "ctxs": ctxs}) + "\n")


def make_fixture(directory: str, family: str = "llama", n: int = 7, layers: int = 2, **mining) -> str:
    """Model, tokenizer, records and a config under ``directory``; returns the config path."""
    model_dir = os.path.join(directory, "model")
    tok = make_tokenizer(model_dir)
    model = tiny_model(family, layers=layers, hidden=32, intermediate=64, vocab=len(tok))
    model.save_pretrained(model_dir)
    records = os.path.join(directory, "records.jsonl")
    write_records(records, n)
    cfg = {
        "model": {"path": model_dir, "attn_implementation": "eager"},
        "data": {"prompt_style": "compact", "max_length": 48},
        "mining": {"file": records, "num_examples": n, "steps": 4, "chunk_rows": 3, "top_k": 5, "n_relevant": 6,
                   "n_irrelevant": 6, "n_shared": 3, "n_target_layers": 1, "shard_every": 1, **mining},
        "runtime": {"output_dir": os.path.join(directory, "out"), "torch_threads": 1},
    }
    path = os.path.join(directory, "config.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return path
