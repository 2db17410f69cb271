"""Folders a stage reads, written under one directory (no hub, no benchmark build unless asked), and what a stage
wrote, read back.

- ``mining_workspace(dir)``: a tiny random model + word-level tokenizer, a tiny mining JSONL (with an empty passage
  and an over-long one) and a config YAML; returns the YAML path.
- ``training_workspace(dir)``: a tiny Llama, a handful of train/dev records, a neuron map (``GROUPS``,
  ``TARGET_LAYERS``) and an experiment YAML; returns the YAML path.
- ``eval_checkpoint(dir)``, ``eval_records(path)``, ``eval_config(dir, ...)``: a random Llama over the embedded
  tokenizer whose end-of-sequence row is boosted (generations stop at different lengths), a few test questions of
  the embedded benchmark (world and fresh kinds, with counterfactual passages), and a YAML with tiny eval sizes.
- ``scalars(tb_dir)``: the TensorBoard scalars in a folder, ``{tag: [(step, value), ...]}``.
- ``hand_neuron_map(...)``, ``write_predictions(path, ...)``: a 3-layer neuron map and an evaluation's
  ``<method>.predictions.jsonl`` written by hand, for the run analysis (``rag/analysis.py``).
"""
from __future__ import annotations

import json
import os
import random

import torch
import yaml

from model_patches import model_fingerprint
from neurorit import methods
from neurorit.config import StageConfig
from neurorit.neuron_map import NeuronMap
from tests.support.models import tiny_model, word_tokenizer
from train import recipes


def write_yaml(path: str, cfg: dict) -> str:
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return path


def write_jsonl(path: str, rows) -> str:
    with open(path, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


HAND_FINGERPRINT = {"architecture": "LlamaForCausalLM", "num_layers": 3, "intermediate_size": 8}


def hand_neuron_map(irrelevant_rows, targets=(1,)) -> NeuronMap:
    """A map of ``HAND_FINGERPRINT``: relevant-only (0, 1) and (2, 3), shared (1, 5), the given irrelevant-only
    ``(layer, neuron)`` pairs and target layers."""
    def rows(pairs):
        return torch.tensor([[layer, neuron, 1, 1] for layer, neuron in pairs], dtype=torch.long).reshape(-1, 4)
    return NeuronMap({"relevant_only": rows([(0, 1), (2, 3)]), "irrelevant_only": rows(irrelevant_rows),
                      "shared": rows([(1, 5)])}, list(targets), HAND_FINGERPRINT)


def write_predictions(path, matches: dict[str, list[float]], answers: dict[str, list[str]] | None = None,
                      kinds: list[str] | None = None) -> str:
    """``{setting: [match of question q0, q1, ...]}`` as prediction rows (answer "right" / "wrong" unless
    ``answers`` gives ``{setting: [answer, ...]}``; ``kinds`` the questions' ``meta.kind``)."""
    rows = []
    for setting, values in matches.items():
        for i, m in enumerate(values):
            answer = answers[setting][i] if answers else ("right" if m else "wrong")
            rows.append({"id": f"q{i}", "setting": setting, "answer": answer, "output": answer, "match": m,
                         "kind": kinds[i] if kinds else ""})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return write_jsonl(path, rows)


def save_checkpoint(model, tokenizer, directory: str) -> str:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def unnamed_files(folder: str, named: set) -> list[str]:
    """The entries of ``folder`` that no path in ``named`` (the run layout's, neurorit/run_layout.py) names:
    a stage that writes an inter-stage file the layout does not know."""
    names = {os.path.basename(os.path.normpath(p)) for p in named}
    return sorted(n for n in os.listdir(folder) if n not in names)


def layout_paths(files) -> set:
    """Every path a run-layout files object (MiningFiles, StageFiles) names through its properties."""
    return {getattr(files, p) for p in dir(type(files)) if isinstance(getattr(type(files), p), property)}


def scalars(tb_dir: str) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb_dir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ------------------------------------------------------------------------------------------------ mining
MINING_WORDS = ("alpha beta gamma delta omega kappa sigma theta lambda zeta red blue green black white city river "
                "mountain born in lives capital of is the who what where").split()


def mining_tokenizer():
    return word_tokenizer(MINING_WORDS)


def mining_records(n: int, seed: int = 0) -> list[dict]:
    """``n`` records; record 2 has an empty irrelevant passage, record 4 a passage far longer than the context."""
    rng = random.Random(seed)
    names, values = MINING_WORDS[:10], MINING_WORDS[10:18]
    rows = []
    for i in range(n):
        who, val = rng.choice(names), rng.choice(values)
        noise = " ".join(rng.choice(MINING_WORDS) for _ in range(rng.randint(4, 9)))
        gold = f"{who} {rng.choice(['lives in', 'is born in'])} the {val} city"
        if i == 4:
            gold = gold + " " + " ".join(rng.choice(MINING_WORDS) for _ in range(80))
        ctxs = [{"title": "", "text": gold, "has_answer": True}, {"title": "", "text": noise, "has_answer": False}]
        if i == 2:
            ctxs.append({"title": "", "text": "", "has_answer": False})
        rows.append({"id": f"q{i}", "question": f"where {who} lives", "answers": [val], "ctxs": ctxs})
    return rows


def mining_workspace(directory: str, family: str = "llama", n: int = 7, layers: int = 2, **mining) -> str:
    """Model, tokenizer, records and a config under ``directory``; returns the config path."""
    tok = mining_tokenizer()
    model = tiny_model(family, layers=layers, hidden=32, intermediate=64, tokenizer=tok)
    model_dir = save_checkpoint(model, tok, os.path.join(directory, "model"))
    records = write_jsonl(os.path.join(directory, "records.jsonl"), mining_records(n))
    return write_yaml(os.path.join(directory, "config.yaml"), {
        "model": {"path": model_dir, "attn_implementation": "eager"},
        "data": {"prompt_style": "compact", "max_length": 48},
        "mining": {"file": records, "num_examples": n, "steps": 4, "chunk_rows": 3, "top_k": 5, "n_relevant": 6,
                   "n_irrelevant": 6, "n_shared": 3, "n_target_layers": 1, "shard_every": 1, **mining},
        "runtime": {"output_dir": os.path.join(directory, "out"), "torch_threads": 1},
    })


# ---------------------------------------------------------------------------------------------- training
PEOPLE = ["ann", "bob", "cid", "dan", "eve", "fay", "gus", "hal", "ida", "jon", "kim", "lea"]
RELATIONS = ["born", "lives", "works"]
PLACES = ["paris", "rome", "oslo", "lima", "kiev", "bern", "doha", "riga"]
HIDDEN, INTERMEDIATE, LAYERS = 64, 128, 2
# (layer, neuron) per group; layer 1 is the target layer, so stage 2 trains its whole FFN instead of these deltas.
GROUPS = {"relevant_only": [(0, 3), (0, 40), (1, 5)], "irrelevant_only": [(0, 7), (0, 9), (1, 11), (1, 90)],
          "shared": [(0, 100), (1, 64)]}
TARGET_LAYERS = [1]


def training_tokenizer():
    return word_tokenizer(PEOPLE + RELATIONS + PLACES)


def training_records(n: int, seed: int) -> list[dict]:
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


def training_neuron_map(model) -> NeuronMap:
    groups = {g: torch.tensor([[layer, n, 1, 1] for layer, n in rows], dtype=torch.long) for g, rows in GROUPS.items()}
    return NeuronMap(groups=groups, target_layers=list(TARGET_LAYERS), fingerprint=model_fingerprint(model))


def setup_trainable(model, method: str, stage: str, nmap, train_gate: bool = True):
    """(the trainable set that ``stage`` of ``method`` chooses on ``model``, the FFN patcher or None): its recipe,
    run as the training loop runs it (patched first when the recipe patches), seed 0."""
    recipe = recipes.build(methods.get(method).rule(stage))
    ctx, trainable = recipes.setup_stage(model, recipe, nmap, 0, StageConfig(train_gate=train_gate))
    return trainable, ctx.patcher


def training_workspace(root: str, n_train: int = 16, stage_overrides: dict | None = None) -> str:
    """Write model, tokenizer, records, neuron map and ``config.yaml`` under ``root``; returns the YAML path."""
    tokenizer = training_tokenizer()
    model = tiny_model("llama", layers=LAYERS, hidden=HIDDEN, intermediate=INTERMEDIATE, tokenizer=tokenizer)
    model_dir = save_checkpoint(model, tokenizer, os.path.join(root, "model"))
    data = {split: write_jsonl(os.path.join(root, f"{split}.jsonl"), training_records(n, seed))
            for split, n, seed in (("train", n_train, 1), ("dev", 6, 2))}
    out = os.path.join(root, "out")
    training_neuron_map(model).save(os.path.join(out, "mining"))
    stage = {**dict(batch_size=4, micro_batch_size=2, lr=1e-2, max_steps=3, epochs=1.0, warmup_ratio=0.0,
                    zero_stage=3, num_docs=3, grad_clip=1.0), **(stage_overrides or {})}
    return write_yaml(os.path.join(root, "config.yaml"), {
        "model": {"path": model_dir, "attn_implementation": "eager"},
        "data": {"train_file": data["train"], "dev_file": data["dev"], "prompt_style": "compact", "max_length": 96},
        "stage1": dict(stage), "stage2": dict(stage),
        "runtime": {"output_dir": out, "torch_threads": 1, "seed": 0}})


# -------------------------------------------------------------------------------------------- evaluation
def eval_tokenizer():
    """The embedded benchmark's own tokenizer (its test questions need its world's words)."""
    from benchmarks.embedded.tokenizer import build_tokenizer
    from benchmarks.embedded.world import World

    return build_tokenizer(World(0))


def eval_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32):
    model = tiny_model("llama", seed, layers, hidden, 2 * hidden, attn_implementation="sdpa", tokenizer=tokenizer,
                       max_positions=512, scale=0.2, norm_noise=None)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] *= 4.0  # EOS wins for some contexts: ragged stops
    return model


def eval_checkpoint(directory: str, seed: int = 0) -> str:
    tok = eval_tokenizer()
    return save_checkpoint(eval_model(tok, seed), tok, directory)


def eval_records(path: str, n_questions: int = 60) -> str:
    from benchmarks.embedded.benchmark import build_benchmark
    from neurorit.records import write_records

    write_records(build_benchmark(seed=0, n_questions=n_questions)["test"], path)
    return path


def eval_config(directory: str, test_file: str, model_path: str, batch_size: int = 4, max_new_tokens: int = 6,
                instruction: str = "two_step") -> str:
    return write_yaml(os.path.join(directory, "eval.yaml"), {
        "model": {"path": model_path, "attn_implementation": "auto"},
        "data": {"test_file": test_file, "prompt_style": "compact", "num_docs": 5, "max_length": 128},
        "eval": {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "bootstrap": 200,
                 "instruction": instruction},
        "runtime": {"output_dir": os.path.join(directory, "run"), "torch_threads": 1, "seed": 0},
    })
