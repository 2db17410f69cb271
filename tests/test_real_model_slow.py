"""SmolLM2-135M-Instruct (``make real-model``) through every entry point on CPU, with tiny budgets: one mining
run, one stage-1 step, one stage-2 step, one evaluation batch, all with its chat template. Skipped when the
converted model is not there (no download inside the tests)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "outputs", "models", "smollm2-135m-instruct")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.isfile(os.path.join(MODEL, "config.json")),
                                 reason="SmolLM2 not converted: run `make real-model`")]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def test_real_model_pipeline(tmp_path):
    from transformers import AutoTokenizer

    from neurorit.prompts import encode, prompt_builder
    from neurorit.records import load_records

    bench = tmp_path / "benchmark"
    out = tmp_path / "run"
    cfg = {
        "model": {"path": MODEL},
        "data": {"train_file": str(bench / "train.jsonl"), "dev_file": str(bench / "dev.jsonl"),
                 "test_file": str(bench / "test.jsonl"), "prompt_style": "paper", "chat_template": "auto",
                 "num_docs": 3, "max_length": 384, "benchmark_questions": 60},
        "mining": {"num_examples": 2, "steps": 2, "chunk_rows": 64, "n_relevant": 8, "n_irrelevant": 8,
                   "n_shared": 4, "n_target_layers": 1, "zero_stage": 0},
        "stage1": {"max_steps": 1, "batch_size": 1, "micro_batch_size": 1, "zero_stage": 0, "lr": 1e-4},
        "stage2": {"max_steps": 1, "batch_size": 1, "micro_batch_size": 1, "zero_stage": 0, "lr": 5e-5},
        "eval": {"settings": ["gold", "closed_book"], "num_examples": 4, "batch_size": 8, "max_new_tokens": 8,
                 "bootstrap": 10},
        "runtime": {"output_dir": str(out), "torch_threads": 1},
    }
    cfg_path = tmp_path / "smollm2_tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    def run(*args):
        res = subprocess.run([sys.executable, *args, "--config", str(cfg_path)], cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=1200)
        assert res.returncode == 0, (args, res.stderr[-4000:])
        return res.stdout + res.stderr

    run("-m", "benchmarks.english.benchmark", "--no-probe")
    records = load_records(str(bench / "train.jsonl"))
    tok = AutoTokenizer.from_pretrained(MODEL)
    builder = prompt_builder(yaml_ns(cfg["data"]), tok)
    assert builder.chat is not None and builder.chat.stop_token == "<|im_end|>"
    s1 = encode(tok, builder.stage1(records[0].question, records[0].ctxs[-3:]), 384)
    assert [t for t in s1.labels if t != -100] == [tok.convert_tokens_to_ids("<|im_end|>")]

    run("attribution/mine.py")
    nmap = json.loads((out / "mining" / "neuron_map.json").read_text())
    assert nmap["fingerprint"]["num_layers"] == 30
    run("train/stage1.py")
    run("train/stage2.py")
    export = out / "stage2" / "export"
    assert (export / "config.json").is_file()
    run("-m", "rag.evaluate", "--model", str(export), "--name", "neurorit", "--no-progress")
    result = json.loads((out / "eval" / "neurorit.eval.json").read_text())
    assert set(result["settings"]) == {"gold", "closed_book"}
    assert all(0.0 <= c["match"] <= 1.0 and c["n"] == 4 for c in result["settings"].values())
    preds = [json.loads(line) for line in (out / "eval" / "neurorit.predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 8 and all("<|im_end|>" not in p["output"] for p in preds)


def yaml_ns(d: dict):
    from types import SimpleNamespace

    return SimpleNamespace(**d)
