"""The committed embedded base model really reads, and is really misled (issue 2's bars, dev split).

Evaluated exactly as the pipeline evaluates (two-step instruction, greedy, Match):
fresh facts gold-only >= 0.8; fresh facts natural top-5 at least 10 points lower; world facts closed-book
>= 0.5; world facts with only irrelevant passages at least 10 points below closed-book.
"""
import os

import pytest

from neurorit.config import load_config
from benchmarks.embedded.benchmark import build_benchmark
from model_patches import load_tokenizer
from rag.evaluate import evaluate_model, load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "assets", "base-model")


@pytest.fixture(scope="module")
def dev_summary():
    cfg = load_config(os.path.join(ROOT, "configs", "embedded.yaml"),
                      ["--eval.settings", "gold,top5,noise_only,closed_book", "--eval.bootstrap", "200"])
    records = build_benchmark(cfg.data.benchmark_seed, cfg.data.benchmark_questions)["dev"][:300]
    model = load_model(MODEL, cfg)
    summary, _ = evaluate_model(model, load_tokenizer(MODEL), records, cfg, show_progress=False)
    by = {kind: {s: v["match"] for s, v in block.items()} for kind, block in summary["by_kind"].items()}
    print("\nbase model, dev, Match:", by)
    return by


def test_reads_fresh_facts(dev_summary):
    assert dev_summary["fresh"]["gold"] >= 0.8


def test_misled_by_natural_top5(dev_summary):
    assert dev_summary["fresh"]["top5"] <= dev_summary["fresh"]["gold"] - 0.10


def test_knows_world_facts(dev_summary):
    assert dev_summary["world"]["closed_book"] >= 0.5


def test_misled_by_noise_on_world_facts(dev_summary):
    assert dev_summary["world"]["noise_only"] <= dev_summary["world"]["closed_book"] - 0.10


def test_loads_like_any_checkpoint():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(MODEL)
    tok = AutoTokenizer.from_pretrained(MODEL)
    assert model.config.model_type == "llama" and tok.eos_token == "</s>"
    assert os.path.getsize(os.path.join(MODEL, "model.safetensors")) < 25 * 2**20
