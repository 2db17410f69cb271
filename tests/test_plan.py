"""The memory planner (neurorit/memory.py, CLI scripts/plan.py) against hand-computed values, transformers' own parameter counts and
DeepSpeed's ZeRO-3 estimator."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from neurorit import methods
from neurorit import memory as plan_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GIB = 1024 ** 3

# hidden 8, FFN 16, 2 layers, 2 heads of 4 (1 kv head), vocab 32, untied
TINY = {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32, "tie_word_embeddings": False}


def tiny_options(**kw):
    base = dict(nodes=1, gpus_per_node=2, gpu_gib=1.0, reserve_gib=0.5, offload=False, mining_seq_len=4, seq_len=6,
                stage2_label_tokens=256,
                micro_batch=3, chunk_rows=5, steps=20, n_relevant=2, n_irrelevant=3, n_shared=1, target_layers=1,
                gradient_checkpointing=False, prefetch_bucket=10, reduce_bucket=20, overlap_comm=True)
    base.update(kw)
    return plan_mod.Options(**base)


def test_tiny_shape_by_hand():
    s = plan_mod.shape_from_config("tiny", TINY)
    # q 8x8 + k,v 8x4 each + o 8x8 + gate/up/down 3x8x16 + 2 norms of 8
    assert s.layer_params() == 64 + 64 + 64 + 384 + 16 == 592
    # 2 layers + embedding 32x8 + lm_head 32x8 + final norm
    assert s.total_params() == 2 * 592 + 2 * 256 + 8 == 1704
    assert s.largest_layer_params() == 256  # the embedding


def test_tiny_plan_by_hand():
    r = plan_mod.plan(plan_mod.shape_from_config("tiny", TINY), tiny_options())
    usable = GIB // 2
    assert r["usable"] == usable
    m = r["mining"]
    assert m["weights_shard"] == 2 * 1704 // 2 == 1704
    assert m["gathered_layer"] == 4 * 256 == 1024
    assert m["zero_buffers"] == 2 * 10 * 2 == 40  # bf16 prefetch bucket, doubled by overlap_comm
    assert m["kv_cache"] == 2 * 2 * 2 * 4 * 4 == 128  # bytes x (k, v) x layers x kv width x tokens
    # per layer: 10 x 8 + 4 x 16 + 2 x 2 x 4 (scores against the shared cache) = 160; x 2 layers x 2 bytes
    # + logits 8 bytes x 32
    assert m["per_row"] == 2 * 2 * 160 + 8 * 32 == 896
    assert m["ig_rows"] == 5 * 896
    assert m["total"] == 1704 + 1024 + 40 + 128 + 4480 == 7376
    assert m["max_chunk_rows"] == (usable - 2896) // 896 == 599183
    assert m["rows_per_example"] == 40

    s1, s2 = r["stage1"], r["stage2"]
    assert s1["trainable_params"] == 3 * 3 * 8 == 72  # 3 neurons x (gate row + up row + down column)
    assert s2["trainable_params"] == 6 * 24 + 1 * 3 * 8 * 16 == 528  # 6 neurons + one whole FFN
    assert s1["zero_buffers"] == 2 * (10 + 20) * 2 == 120
    assert (s1["deltas"], s1["optimizer"]) == (6 * 72 // 2, 12 * 72 // 2) == (216, 432)
    assert (s2["deltas"], s2["optimizer"]) == (6 * 528 // 2, 12 * 528 // 2) == (1584, 3168)
    # per token per layer 10 x 8 + 4 x 16 + 2 x 4 = 152; 2 bytes x 6 tokens x 2 layers; logits 10 B x 32 at the
    # positions with a loss: stage 1's one end token, stage 2's target (256 by default: all 6 tokens here)
    assert s1["per_sequence"] == 2 * 6 * 2 * 152 + 10 * 1 * 32 == 3968
    assert s2["per_sequence"] == 2 * 6 * 2 * 152 + 10 * 6 * 32 == 5568
    assert s1["activations"] == 3 * 3968
    assert s1["total"] == 1704 + 1024 + 120 + 216 + 432 + 3 * 3968 == 15400
    assert s2["total"] == 1704 + 1024 + 120 + 1584 + 3168 + 3 * 5568 == 24304
    assert s1["max_micro_batch_no_ckpt"] == (usable - (1704 + 1024 + 120 + 216 + 432)) // 3968
    # checkpointing: layer inputs 2 x 6 x (2 x 8) + one layer recomputed 2 x 6 x 152 + logits
    assert s1["max_micro_batch_ckpt"] == (usable - 3496) // (2 * 6 * (2 * 8 + 152) + 320)
    short = plan_mod.plan(plan_mod.shape_from_config("tiny", TINY), tiny_options(stage2_label_tokens=2))
    assert short["stage2"]["per_sequence"] == 2 * 6 * 2 * 152 + 10 * 2 * 32
    assert s1["cpu_per_node"] == 0


def test_tiny_offload_and_checkpointing():
    r = plan_mod.plan(plan_mod.shape_from_config("tiny", TINY), tiny_options(offload=True, gradient_checkpointing=True))
    s2 = r["stage2"]
    assert (s2["weights_shard"], s2["deltas"], s2["optimizer"]) == (0, 0, 0)
    assert s2["per_sequence"] == 2 * 6 * (2 * 8 + 152) + 1920 == 3936
    assert s2["total"] == 1024 + 120 + 3 * 3936
    # host: 1.5 x (2 bytes x 1704 weights + 18 bytes x 528 trainable) on one node
    assert s2["cpu_per_node"] == int(1.5 * (2 * 1704 + 18 * 528))
    assert r["mining"]["weights_shard"] == 0
    assert r["mining"]["cpu_per_node"] == math.ceil(1.5 * 2 * r["params"] / r["options"]["nodes"])


def test_crosscheck_matches_deepspeed_estimator():
    pytest.importorskip("deepspeed")
    r = plan_mod.plan(plan_mod.shape_from_config("tiny", TINY), tiny_options())
    c = r["crosscheck"]
    assert c["ours"] == {"frozen_weights": 1704 + 1024, "full_finetune": 18 * 1704 // 2 + 1024, "all_offloaded": 1024}
    assert c["deepspeed"] == c["ours"]


@pytest.mark.parametrize("name,expected", [
    ("Llama-3-8B", 8_030_261_248), ("Llama-3-70B", 70_553_706_496),
    ("Mistral-7B", 7_241_732_096), ("Qwen2.5-72B", 72_706_203_648),
])
def test_bundled_configs_parameter_counts(name, expected):
    _, cfg = plan_mod.resolve_config(name.lower())
    assert plan_mod.shape_from_config(name, cfg).total_params() == expected


@pytest.mark.parametrize("extra", [{}, {"model_type": "qwen2"}, {"tie_word_embeddings": True},
                                   {"attention_bias": True}, {"head_dim": 6}])
def test_parameter_count_matches_transformers(extra):
    """The analytic count equals the parameters of the real Hugging Face module (built on the meta device)."""
    transformers = pytest.importorskip("transformers")
    cfg = dict(TINY, **extra)
    hf_cfg = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    assert plan_mod.shape_from_config("tiny", cfg).total_params() == sum(p.numel() for p in model.parameters())


def cli(*args: str) -> subprocess.CompletedProcess:
    """``scripts/plan.py`` as a user runs it."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plan.py"), *args], capture_output=True,
                          text=True)


def test_cli_llama70b_on_4x8():
    run = cli("--model", "Llama-3-70B", "--nodes", "4", "--gpus-per-node", "8", "--json")
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout)
    assert r["ranks"] == 32
    assert r["params"] == 70_553_706_496
    assert r["mining"]["weights_shard"] == -(-2 * 70_553_706_496 // 32)
    for phase in ("mining", "stage1", "stage2"):
        assert r[phase]["total"] <= r["usable"], phase
    assert r["mining"]["max_chunk_rows"] >= r["mining"]["rows"]
    if r["crosscheck"]["deepspeed"] is not None:
        assert r["crosscheck"]["deepspeed"] == r["crosscheck"]["ours"]


def test_cli_text_and_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    run = cli("--model", str(tmp_path), "--nodes", "1", "--gpus-per-node", "2")
    assert run.returncode == 0, run.stderr
    assert "largest IG chunk that fits" in run.stdout and "stage2" in run.stdout and "cross-check" in run.stdout
    run = cli("--model", "no-such-model")
    assert run.returncode == 2 and "not a bundled config" in run.stderr
    run = cli("--model", "Mistral-7B", "--nodes", "0")
    assert run.returncode == 2 and "--nodes must be >= 1" in run.stderr


def test_the_planner_counts_what_training_trains(tiny_model):
    """The planner's stage-1 count and training's count come from one formula: on a model and a map whose
    irrelevant-only neurons lie outside the target layers, they agree exactly."""
    from model_patches import model_fingerprint
    from neurorit.neuron_map import NeuronMap
    from train import recipes

    model = tiny_model("llama", layers=2, hidden=16, intermediate=32)
    rows = torch.tensor([[0, 3, 1, 1], [1, 5, 1, 1], [1, 7, 1, 1]])
    nmap = NeuronMap({"relevant_only": rows[:0], "irrelevant_only": rows, "shared": rows[:0]}, [1],
                     model_fingerprint(model))
    trained = recipes.build(methods.get("neurorit").rule("stage1")).planned_count(model, nmap, 0)
    shape = plan_mod.shape_from_config("tiny", model.config.to_dict())
    assert trained == plan_mod.trainable_params(shape, plan_mod.Options(n_irrelevant=3))["stage1"]


@pytest.mark.parametrize("name", ["zero0", "zero2", "zero3", "zero3_offload"])
def test_gpu_ds_configs_are_concrete_and_parse(name):
    """The GPU configs the planner reads: concrete values (no "auto", no batch sizes), bf16, and DeepSpeed accepts
    them once the batch sizes are filled in (as neurorit.parallel.ds_config_for does)."""
    path = os.path.join(ROOT, "ds_configs", f"{name}.json")
    text = open(path).read()
    cfg = json.loads(text)
    assert '"auto"' not in text
    assert not {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"} & set(cfg)
    assert cfg["bf16"]["enabled"] is True
    zero = cfg["zero_optimization"]
    assert zero["stage"] == int(name[4])
    if zero["stage"] >= 2:
        assert zero["overlap_comm"] is True
    if zero["stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        assert plan_mod.buckets_from_ds_config(path) == {"prefetch_bucket": zero["stage3_prefetch_bucket_size"],
                                                          "reduce_bucket": zero["reduce_bucket_size"],
                                                          "overlap_comm": True}
    if name == "zero3_offload":
        assert zero["offload_param"]["device"] == zero["offload_optimizer"]["device"] == "cpu"
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg.update(train_batch_size=8, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=8, gradient_clipping=1.0)
    parsed = DeepSpeedConfig(cfg)
    assert parsed.zero_optimization_stage == zero["stage"]
