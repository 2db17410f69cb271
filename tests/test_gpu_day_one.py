"""GPU day one (issue 28), on CPU: what would break on a GPU cluster before any GPU runs, each exercised with fake
devices, a monkeypatched ``torch.cuda``, real 2-rank gloo DeepSpeed runs or static checks."""
import os
import subprocess
import sys
import time

import pytest

from tests.support.ranks import ROOT, child_env
from tests.support.workspaces import mining_workspace, training_workspace

# A rank of `srun --gpus-per-task=1`: SLURM_LOCALID 3 on a node, but the task sees one GPU. DeepSpeed's engine and
# zero.Init call set_device(LOCAL_RANK), so LOCAL_RANK must name a visible device before DeepSpeed starts.
_SLURM_RANK = """
import os, torch, deepspeed
from neurorit.parallel import launch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.set_device = lambda index: print("set_device", index)
def stop(*args, **kwargs):
    print("LOCAL_RANK before DeepSpeed", os.environ["LOCAL_RANK"])
    raise SystemExit(0)
deepspeed.init_distributed = stop
launch.init_distributed()
"""


def test_srun_one_gpu_per_task_gives_deepspeed_local_rank_0():
    env = {k: v for k, v in child_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(SLURM_PROCID="3", SLURM_LOCALID="3", SLURM_STEP_NUM_TASKS="4", SLURM_JOB_NODELIST="gpu1")
    out = subprocess.run([sys.executable, "-c", _SLURM_RANK], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "set_device 0" in out.stdout and "LOCAL_RANK before DeepSpeed 0" in out.stdout, out.stdout


@pytest.mark.distributed
def test_mining_ranks_with_different_free_memory_agree_and_a_resume_reuses_the_choice(tmp_path, run_ranks):
    """Rank 0 has room for a whole copy, rank 1 not: both mine under ZeRO-3 (before, rank 0 ran replicated and
    rank 1 hung in ZeRO-3's collectives). The job is killed after a shard; requeued where both ranks have room, it
    reuses the recorded choice and its shards."""
    from attribution.stats import read_choices

    cfg = mining_workspace(str(tmp_path), zero_stage="auto")
    out = str(tmp_path / "mined")
    mine = ("tests/dist_scripts/mine_fake_memory.py", "--config", cfg, "--mining.output_dir", out)
    crashed = run_ranks(*mine, env={"NEURORIT_TEST_FREE_GIB_R0": "1000", "NEURORIT_TEST_FREE_GIB_R1": "1e-6",
                                    "NEURORIT_MINE_KILL_AFTER": "1:1"}, timeout=240, check=False)
    assert crashed.returncode != 0 and "ZeRO-3 over the ranks" in crashed.stderr, crashed.stderr[-3000:]
    assert read_choices(os.path.join(out, "stats")) == {"zero3": True, "chunk_rows": 3}
    rerun = run_ranks(*mine, env={"NEURORIT_TEST_FREE_GIB_R0": "1000", "NEURORIT_TEST_FREE_GIB_R1": "1000"},
                      timeout=240)
    assert "reusing the auto choices" in rerun.stderr and "already in" in rerun.stderr
    assert "a whole copy per rank" not in rerun.stderr
    assert os.path.isfile(os.path.join(out, "neuron_map.safetensors"))


def test_a_resume_reuses_the_recorded_chunk_rows_whatever_the_free_memory(tmp_path, monkeypatch):
    """``chunk_rows: auto`` on an accelerator follows free memory and is part of the run's fingerprint: a requeued
    job on GPUs with less free memory must mine with the rows its shards were mined with."""
    from types import SimpleNamespace

    import torch

    from attribution import mine
    from attribution.stats import record_choices
    from neurorit import memory
    from neurorit.config import load_config

    cfg = load_config(mining_workspace(str(tmp_path), chunk_rows="auto"))
    monkeypatch.setattr(mine.parallel, "info", lambda: SimpleNamespace(device=torch.device("cuda", 0)))
    stats, fresh = str(tmp_path / "stats"), str(tmp_path / "fresh")
    os.makedirs(stats)
    monkeypatch.setattr(memory, "rank_memory_bytes", lambda device: 10**12)
    first = mine.agreed_choices(cfg, stats)
    assert first == (False, cfg.mining.steps * 2)  # every (layer, step) row of an example: 2 layers x 4 steps
    record_choices(stats, *first)
    monkeypatch.setattr(memory, "rank_memory_bytes", lambda device: 1)
    assert mine.agreed_choices(cfg, fresh) == (False, 1)  # what a job without shards would choose now
    assert mine.agreed_choices(cfg, stats) == first


def _floor(requirement: str) -> tuple:
    for line in open(os.path.join(ROOT, "requirements.txt")):
        name, _, spec = line.split("#")[0].strip().partition(">=")
        if name == requirement:
            return tuple(int(x) for x in spec.split(",")[0].split("."))
    raise AssertionError(f"{requirement} not in requirements.txt")


def test_deepspeed_floor_allows_non_reentrant_checkpointing_under_zero3():
    """train/loop.py checkpoints with use_reentrant=False; with frozen weights under ZeRO-3 that raises
    CheckpointError on DeepSpeed below 0.19.3 (deepspeedai/DeepSpeed PR 8148)."""
    assert "use_reentrant\": False" in open(os.path.join(ROOT, "train", "loop.py")).read()
    assert _floor("deepspeed") >= (0, 19, 3)


@pytest.mark.distributed
def test_two_rank_zero3_trains_with_gradient_checkpointing_and_frozen_weights(tmp_path, run_ranks):
    from safetensors.torch import load_file
    import torch

    config = training_workspace(str(tmp_path), stage_overrides={"gradient_checkpointing": True})
    run_ranks("train/stage1.py", "--config", config)
    base = load_file(str(tmp_path / "model" / "model.safetensors"))
    tuned = load_file(str(tmp_path / "out" / "stage1" / "export" / "model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(".mlp." in k for k in changed)  # the deltas learned behind frozen, checkpointed layers


class _NoBuild:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("Error building extension 'fused_adam': ninja not found")


def test_the_summary_names_the_optimizer_that_ran(tmp_path, monkeypatch, single_rank_env):
    """A FusedAdam that could not build falls back to torch's AdamW: train_summary.json says which one ran."""
    import json

    import deepspeed.ops.adam
    import torch

    from neurorit.config import load_config
    from neurorit.parallel import build_optimizer, optimizer_name
    from train.loop import run_stage

    monkeypatch.setattr(deepspeed.ops.adam, "FusedAdam", _NoBuild)
    fallback = build_optimizer([torch.nn.Parameter(torch.zeros(2))], "adamw", 1e-3, 0.0, device=torch.device("cuda"))
    assert optimizer_name(fallback) == "torch.optim.adamw.AdamW"
    cfg = load_config(training_workspace(str(tmp_path), stage_overrides={"max_steps": 1}))
    summary = run_stage("stage1", cfg)
    assert summary["optimizer"] == "torch.optim.adamw.AdamW"
    with open(tmp_path / "out" / "stage1" / "train_summary.json") as fh:
        assert json.load(fh)["optimizer"] == "torch.optim.adamw.AdamW"


@pytest.fixture
def reductions():
    """cuBLAS's reduced-precision flags as they were, restored after the test (they are process-wide)."""
    import torch

    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction)
    matmul.allow_bf16_reduced_precision_reduction = matmul.allow_fp16_reduced_precision_reduction = True
    yield matmul
    matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction = saved


def test_bf16_mining_on_cuda_turns_off_reduced_precision_reductions(tmp_path, monkeypatch, reductions, capsys):
    """cuBLAS reduces bf16 matmuls partly in bf16 by default; the CPU bounds of tests/test_bf16_ig.py assume fp32
    accumulation. Mining on CUDA in bf16 turns that off and says so; on CPU nothing changes."""
    from types import SimpleNamespace

    import torch

    from attribution import mine
    from neurorit import parallel

    seen = []
    real = parallel.exact_reductions
    monkeypatch.setattr(parallel, "exact_reductions", lambda device, dtype: seen.append((device, dtype)) or
                        real(torch.device("cuda", 0), "bfloat16"))
    cfg = mining_workspace(str(tmp_path))
    mine.main(["--config", cfg, "--mining.output_dir", str(tmp_path / "mined")])
    assert seen == [(torch.device("cpu"), "float32")]  # the run's own device and dtype
    assert not reductions.allow_bf16_reduced_precision_reduction
    assert not reductions.allow_fp16_reduced_precision_reduction
    assert "matmuls on CUDA reduce in fp32 (cuBLAS reduced-precision reductions off)" in capsys.readouterr().err
    reductions.allow_bf16_reduced_precision_reduction = True
    assert not real(torch.device("cpu"), "bfloat16") and reductions.allow_bf16_reduced_precision_reduction
    assert not real(torch.device("cuda", 0), "float32") and reductions.allow_bf16_reduced_precision_reduction
    assert real(torch.device("cuda", 0), "bfloat16") and not reductions.allow_bf16_reduced_precision_reduction


# ------------------------------------------------------------------------------------------ launch details
COMMON = os.path.join(ROOT, "scripts", "slurm", "common.sh")


def _bash(script: str, env: dict) -> str:
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=child_env(env), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_slurm_rendezvous_is_the_first_node_name_not_its_node_addr(tmp_path):
    """torchrun's c10d store starts on the node that recognises the endpoint as itself: SLURM's NodeAddr may be
    another interface's address, and then no node hosts it and every node waits."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text('#!/bin/bash\nif [[ "$1 $2" == "show hostnames" ]]; then printf "gpu07\\ngpu08\\n";'
                                   ' else echo "NodeName=gpu07 NodeAddr=10.9.9.7 NodeHostName=gpu07"; fi\n')
    (fake / "scontrol").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "gpu[07-08]",
           "NR_STATE_DIR": str(tmp_path / "state"), "PYTHON": sys.executable, "NPROC_PER_NODE": "8"}
    env = {k: v for k, v in {**os.environ, **env}.items() if k not in ("MASTER_ADDR", "NEURORIT_DIST_TIMEOUT_MIN")}
    out = _bash(f'source {COMMON}; nr_setup >/dev/null; echo "$MASTER_ADDR $NEURORIT_DIST_TIMEOUT_MIN"', env)
    assert out.split() == ["gpu07", "30"]


def test_the_deepspeed_launcher_keeps_the_gpus_slurm_bound(tmp_path):
    """The deepspeed launcher sets CUDA_VISIBLE_DEVICES=0..slots-1 on every node; on a shared node SLURM bound
    GPUs 4-7 to the job, so each rank must map DeepSpeed's ids through them."""
    show = tmp_path / "show.py"
    show.write_text("import os\nprint(os.environ['CUDA_VISIBLE_DEVICES'])\n")
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "NR_BOUND_GPUS": "4,5,6,7", "LOCAL_RANK": "1"}
    assert _bash(f"bash {COMMON} --rank {sys.executable} {show}", env).splitlines()[-1] == "4,5,6,7"
    env.pop("NR_BOUND_GPUS")  # a whole node (or torchrun): the ids stay
    assert _bash(f"bash {COMMON} --rank {sys.executable} {show}", env).splitlines()[-1] == "0,1,2,3"


def test_the_collective_timeout_is_30_minutes_and_configurable():
    code = "from neurorit.parallel import launch; print(launch.DEFAULT_TIMEOUT.total_seconds() / 60)"
    env = {k: v for k, v in child_env().items() if k != "NEURORIT_DIST_TIMEOUT_MIN"}
    ran = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, **extra}, capture_output=True,
                          text=True, timeout=120).stdout.strip() for extra in ({}, {"NEURORIT_DIST_TIMEOUT_MIN": "7"})]
    assert ran == ["30.0", "7.0"]


# ------------------------------------------------------------------------------------------ GPU configs
# (config, bundled model shape, the fewest 8-GPU nodes it is documented for)
GPU_CONFIGS = [("llama3_8b_instruct", "Llama-3-8B", 1), ("llama3_70b_instruct", "Llama-3-70B", 1)]
H100_GIB = 80.0


@pytest.mark.parametrize("name,model,min_nodes", GPU_CONFIGS)
@pytest.mark.parametrize("world", [8, 16, 32, 64])
def test_gpu_configs_divide_and_fit_80gb_h100s(name, model, min_nodes, world, monkeypatch):
    """Each shipped GPU config at 8-64 ranks: the batch divides (the micro-batch lowered as train/loop.py does),
    the DeepSpeed JSON it runs with reduces and accumulates in fp32, and by the memory planner every phase fits an
    80 GB H100 (mining: a whole copy per rank when ``auto`` would choose it, else ZeRO-3 with at least one row)."""
    from attribution.mine import FIT_SHARE
    from neurorit import memory, parallel
    from neurorit.config import load_config

    assert world >= 8 * min_nodes
    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    assert cfg.model.dtype == "bfloat16" and cfg.model.attn_implementation == "flash_attention_2"
    assert (cfg.mining.n_relevant, cfg.mining.n_irrelevant, cfg.mining.n_shared, cfg.mining.n_target_layers) == \
        (100, 100, 30, 3) and 389 <= cfg.mining.num_examples <= 400
    shape = memory.shape_from_config(*memory.resolve_config(model))
    ds_path = os.path.join(ROOT, "ds_configs", "zero3.json")
    buckets = memory.buckets_from_ds_config(ds_path)
    monkeypatch.setattr("neurorit.parallel.ds_config.world_size", lambda: world)
    for st in (cfg.stage1, cfg.stage2):
        assert st.zero_stage == 3 and not st.ds_config
        micro = max(1, min(st.micro_batch_size, st.batch_size // world))  # as train/loop.py
        ds = parallel.ds_config_for(3, st.batch_size, micro, ds_path, cfg.model.dtype)
        assert ds["data_types"]["grad_accum_dtype"] == "fp32" and ds["communication_data_type"] == "fp32"
        options = memory.Options(nodes=world // 8, gpus_per_node=8, gpu_gib=H100_GIB, seq_len=cfg.data.max_length,
                                 mining_seq_len=cfg.data.max_length, micro_batch=micro, steps=cfg.mining.steps,
                                 gradient_checkpointing=st.gradient_checkpointing, **buckets)
        r = memory.plan(shape, options)
        fp32_reduce = 2 * buckets["reduce_bucket"] * (2 if buckets["overlap_comm"] else 1)  # the planner counts bf16
        stage = r["stage1" if st is cfg.stage1 else "stage2"]
        assert stage["total"] + fp32_reduce <= r["usable"], (name, world, stage["total"] / 2**30)
    whole_copy = memory.replicated_mining_bytes(shape, 2, cfg.data.max_length, 1)
    if whole_copy > FIT_SHARE * H100_GIB * 2**30:  # mining.zero_stage auto partitions
        assert r["mining"]["max_chunk_rows"] >= 1


# ------------------------------------------------------------------------------------------ stage 1 -> stage 2
def test_stage2_and_vllm_refuse_an_export_whose_learned_change_bf16_rounds_away(tmp_path, single_rank_env):
    """Stage 1's bf16 export keeps weights in fp32 where bf16 would round its learned change away; stage 2 (or
    vLLM) loading it in bf16 would start from (serve) something else than what stage 1 learned: one line."""
    from model_patches import export_hf
    from model_patches.loading import refuse_rounding
    from neurorit.config import load_config
    from neurorit.errors import UserError
    from rag.backends import VLLMBackend
    from tests.support.workspaces import training_tokenizer
    from tests.test_bf16_export import bf16_patched
    from train.loop import run_stage

    export = str(tmp_path / "stage1_export")
    export_hf(bf16_patched("llama", delta_scale=1e-3)[0], export, tokenizer=training_tokenizer())
    cfg = load_config(training_workspace(str(tmp_path / "run")), ["--stage2.init_from", export,
                                                                  "--model.dtype", "bfloat16"])
    refused = r"would load .* in bfloat16, rounding away up to \d+\.\d% of what its training learned"
    with pytest.raises(UserError, match="stage2 " + refused) as err:
        run_stage("stage2", cfg)
    assert "\n" not in str(err.value) and "--model.dtype float32" in str(err.value)
    with pytest.raises(UserError, match="eval.backend vllm " + refused):
        VLLMBackend.load(export, cfg)
    refuse_rounding(export, "float32", "stage2")  # loading it in fp32 keeps the change: no refusal


def test_the_hf_eval_backend_refuses_a_model_that_cannot_fit_one_gpu(tmp_path, monkeypatch):
    """eval.backend hf loads the whole model on every rank's GPU: a 70B model would run out of memory part-way
    through loading; it must say to use zero3 or vllm instead, in one line, before loading anything."""
    from types import SimpleNamespace

    import torch

    from neurorit import memory
    from neurorit.config import load_config
    from neurorit.errors import UserError
    from rag import backends

    cfg = load_config(mining_workspace(str(tmp_path)), ["--model.dtype", "bfloat16"])
    monkeypatch.setattr(backends.parallel, "info", lambda: SimpleNamespace(device=torch.device("cuda", 0)))
    shape = memory.shape_from_config(*memory.resolve_config(cfg.model.path))
    weights = 2 * shape.total_params()
    monkeypatch.setattr(memory, "rank_memory_bytes", lambda device: weights - 1)
    with pytest.raises(UserError, match="eval.backend hf puts the whole model on every GPU") as err:
        backends.HFBackend.load(cfg.model.path, cfg)
    assert "--eval.backend zero3" in str(err.value) and "vllm" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setattr(memory, "rank_memory_bytes", lambda device: weights)
    backends.refuse_oversized(cfg.model.path, "bfloat16")  # fits: no refusal
    monkeypatch.setattr(backends.parallel, "info", lambda: SimpleNamespace(device=torch.device("cpu")))
    monkeypatch.setattr(memory, "rank_memory_bytes", lambda device: 1)
    backends.refuse_oversized(cfg.model.path, "bfloat16")  # CPU: host memory, as it always was


# ------------------------------------------------------------------------------------------ scripts/gpu_check.py
def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "scripts", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_check_parts_fit_its_budget_with_time_for_the_tests():
    check = _gpu_check()
    fixed = sum(limit for _, _, limit in check.PARTS.values())
    assert fixed + check.TESTS_MIN_S <= check.BUDGET_S  # before: 500 s of parts in 480, ~5 s left for the tests


def test_ig_flops_count_a_frozen_backward_as_one_forward():
    """IG's backward forms input gradients only (the weights are frozen): forward + backward = 2x the forward."""
    check = _gpu_check()
    one = check.Shape("cpu", 8, 16, 1, 2, 2, 10, 4, 4, 1, (1,))
    layer = 2 * (2 * 8 * 8 + 2 * 8 * 8 * 2 // 2 + 3 * 8 * 16)
    prefill = (4 + 8) * layer  # the prompt and the query (at least 8 tokens)
    assert check._ig_flops(one, 4, steps=1) == prefill + 2 * (layer + 2 * 8 * 10)


def test_the_fused_adam_row_fails_on_the_fallback():
    check = _gpu_check()
    assert check.fused_adam_row("deepspeed.ops.adam.fused_adam.FusedAdam", 41.3)["ok"] is True
    assert check.fused_adam_row("torch.optim.adamw.AdamW", 0.1)["ok"] is False


IMAGE_LACKS = ("datasets", "wandb", "mlflow", "captum", "benchmarks.english", "countryinfo", "gguf")


def test_the_gpu_test_selection_exists_and_needs_nothing_the_image_lacks():
    """The tests part runs ``GPU_TESTS`` on the GPU image, which has no datasets, wandb, captum or the English
    benchmark's libraries: a file that imports one at module level would fail to collect there."""
    import ast
    import os

    check = _gpu_check()
    assert check.GPU_TESTS
    for path in check.GPU_TESTS:
        tree = ast.parse(open(os.path.join(ROOT, path)).read())
        names = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m.startswith(IMAGE_LACKS)], (path, names)


_STUCK_PART = """#!/bin/bash
# A part's process: one row measured, a child left running, then stuck.
out=""; part=""
while [[ $# -gt 0 ]]; do case "$1" in --out) out=$2; shift;; --part) part=$2; shift;; esac; shift; done
echo '{"what": "measured first", "value": 1, "target": "", "ok": true}' >> "$out/$part/rows.jsonl"
sleep 300 & echo $! > "$out/child.pid"
sleep 300
"""


def test_a_timed_out_part_keeps_its_rows_and_its_children_are_killed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    check = _gpu_check()
    fake = tmp_path / "python"
    fake.write_text(_STUCK_PART)
    fake.chmod(0o755)
    (tmp_path / "stuck").mkdir()
    monkeypatch.setattr(check.sys, "executable", str(fake))
    got = check.launch("stuck", SimpleNamespace(out=str(tmp_path), dry_run=True), timeout=3)
    assert [r["what"] for r in got["rows"]] == ["measured first", "part"]
    assert got["rows"][-1]["ok"] is False and got["rows"][-1]["value"].startswith("timed out")
    child = int((tmp_path / "child.pid").read_text())
    for _ in range(50):  # the kill is immediate; reaping by init may take a moment
        time.sleep(0.1)
        try:
            with open(f"/proc/{child}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
    else:
        raise AssertionError(f"the part's child {child} outlived the part's timeout")
