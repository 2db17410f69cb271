"""Training-test workspace: a tiny random Llama with a word-level tokenizer, a handful of records, a neuron map
and an experiment YAML, all written under one folder (no hub, no benchmark build). Also checks the workspace."""
import json
import os
import random
import socket
import sys
from types import SimpleNamespace

import torch
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from helpers_tiny_models import tiny_model  # noqa: E402

from neurorit.neuron_map import NeuronMap, model_fingerprint  # noqa: E402
from benchmarks.embedded.tokenizer import build_tokenizer  # noqa: E402

PEOPLE = ["ann", "bob", "cid", "dan", "eve", "fay", "gus", "hal", "ida", "jon", "kim", "lea"]
RELATIONS = ["born", "lives", "works"]
PLACES = ["paris", "rome", "oslo", "lima", "kiev", "bern", "doha", "riga"]
HIDDEN, INTERMEDIATE, LAYERS = 64, 128, 2
# (layer, neuron) per group; layer 1 is the target layer, so stage 2 trains its whole FFN instead of these deltas.
GROUPS = {"relevant_only": [(0, 3), (0, 40), (1, 5)], "irrelevant_only": [(0, 7), (0, 9), (1, 11), (1, 90)],
          "shared": [(0, 100), (1, 64)]}
TARGET_LAYERS = [1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env(monkeypatch) -> None:
    """What a launcher would set for a world of one (DeepSpeed wants a process group)."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": os.environ.get("MASTER_PORT") or str(free_port())}.items():
        monkeypatch.setenv(key, value)


def _records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        person, rel = rng.choice(PEOPLE), rng.choice(RELATIONS)
        answer = rng.choice(PLACES)
        ctxs = [{"title": "", "text": f"{person} {rel} {answer} .", "has_answer": True}]
        for _ in range(rng.randint(4, 6)):
            other = rng.choice([p for p in PEOPLE if p != person])
            place = rng.choice([p for p in PLACES if p != answer])
            ctxs.append({"title": "", "text": f"{other} {rng.choice(RELATIONS)} {place} .", "has_answer": False})
        rng.shuffle(ctxs)
        rec = {"id": f"q{seed}-{i}", "question": f"{rel} {person} ?", "answers": [answer], "ctxs": ctxs}
        if i % 2:
            rec["evidence"] = f"{person} {rel} {answer} ."
        out.append(rec)
    return out


def neuron_map(model) -> NeuronMap:
    groups = {g: torch.tensor([[layer, n, 1, 1] for layer, n in rows], dtype=torch.long) for g, rows in GROUPS.items()}
    return NeuronMap(groups=groups, target_layers=list(TARGET_LAYERS), fingerprint=model_fingerprint(model))


def make_workspace(root: str, n_train: int = 16, stage_overrides: dict | None = None) -> str:
    """Write model, tokenizer, records, neuron map and ``config.yaml`` under ``root``; returns the YAML path."""
    words = PEOPLE + RELATIONS + PLACES
    tokenizer = build_tokenizer(SimpleNamespace(words=lambda: words))
    model = tiny_model("llama", layers=LAYERS, hidden=HIDDEN, intermediate=INTERMEDIATE, vocab=len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model_dir = os.path.join(root, "model")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = {}
    for split, n, seed in (("train", n_train, 1), ("dev", 6, 2)):
        data[split] = os.path.join(root, f"{split}.jsonl")
        with open(data[split], "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in _records(n, seed))
    out = os.path.join(root, "out")
    neuron_map(model).save(os.path.join(out, "mining"))
    stage = dict(batch_size=4, micro_batch_size=2, lr=1e-2, max_steps=3, epochs=1.0, warmup_ratio=0.0,
                 zero_stage=3, num_docs=3, grad_clip=1.0, **(stage_overrides or {}))
    cfg = {"model": {"path": model_dir, "attn_implementation": "eager"},
           "data": {"train_file": data["train"], "dev_file": data["dev"], "prompt_style": "compact",
                    "max_length": 96},
           "stage1": dict(stage), "stage2": dict(stage),
           "runtime": {"output_dir": out, "torch_threads": 1, "seed": 0}}
    path = os.path.join(root, "config.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return path


def test_workspace_is_consistent(tmp_path):
    from neurorit.config import load_config
    from neurorit.records import load_records
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config(make_workspace(str(tmp_path)))
    assert len(load_records(cfg.data.train_file)) == 16
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path)
    assert AutoTokenizer.from_pretrained(cfg.model.path).vocab_size == model.config.vocab_size
    NeuronMap.load(os.path.join(cfg.runtime.output_dir, "mining")).check_fingerprint(model_fingerprint(model))
