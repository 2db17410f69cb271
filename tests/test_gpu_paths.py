"""Paths our users take on GPU clusters, exercised here on CPU: the device of a rank under SLURM's GPU binding, an
optimizer that cannot be built (fallback in one line, or a one-line refusal under offload), 8-bit Adam under real
2-rank ZeRO-3 with a checkpoint and resume, the GPU ZeRO-3 config (small parameters kept whole on every rank,
overlapped communication) training for real, weights loading straight onto an accelerator, deterministic kernels
that warn or (strict) raise, and mining's ``chunk_rows: auto`` (64 on CPU, as many rows as fit on an accelerator)."""
import os
from types import SimpleNamespace

import pytest
import yaml
import torch
from safetensors.torch import load_file

from neurorit.config import load_config
from neurorit import memory
from neurorit.parallel import build_optimizer
from neurorit.parallel.launch import cuda_index
from neurorit.errors import UserError
from tests.support.workspaces import mining_workspace, training_workspace


def test_each_rank_finds_its_gpu_whatever_the_binding():
    assert [cuda_index(r, 8) for r in range(8)] == list(range(8))  # one process per GPU, all visible
    assert [cuda_index(r, 1) for r in range(4)] == [0, 0, 0, 0]  # srun --gpus-per-task=1: each sees its own
    with pytest.raises(RuntimeError, match="local rank 5 but 4 visible"):
        cuda_index(5, 4)


class _NoBuild:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("Error building extension 'fused_adam': nvcc not found\n(long compiler log)")


def test_a_fused_adam_that_cannot_build_falls_back_in_one_line(monkeypatch, capsys):
    import deepspeed.ops.adam

    monkeypatch.setattr(deepspeed.ops.adam, "FusedAdam", _NoBuild)
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = build_optimizer(params, "adamw", 1e-3, 0.0, device=torch.device("cuda"))
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["lr"] == 1e-3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FusedAdam failed to build (RuntimeError: Error building extension" in err[0]
    assert "using torch.optim.AdamW" in err[0]


def test_optimizer_offload_refuses_what_deepspeed_would_refuse(monkeypatch):
    import deepspeed.ops.adam

    params = [torch.nn.Parameter(torch.zeros(3))]
    for name in ("adamw_torch", "adamw_8bit"):
        with pytest.raises(UserError, match=f"optimizer {name} cannot run with optimizer offload"):
            build_optimizer(params, name, 1e-3, 0.0, offloaded=True, device=torch.device("cpu"))
    monkeypatch.setattr(deepspeed.ops.adam, "DeepSpeedCPUAdam", _NoBuild)
    with pytest.raises(UserError, match="CPU Adam, which failed to build"):
        build_optimizer(params, "adamw", 1e-3, 0.0, offloaded=True, device=torch.device("cpu"))


def _stage1(run_ranks, config, *extra):
    return run_ranks("train/stage1.py", "--config", config, *extra).stdout


@pytest.mark.slow  # a kill / resume / clean-exit check of real ranks: make test-faults (in .ci/run)
@pytest.mark.distributed
def test_8bit_adam_under_two_rank_zero3_resumes_exactly(tmp_path, run_ranks):
    """bitsandbytes' AdamW8bit over ZeRO-3's flat partitions: a run stopped after 2 of 4 steps and resumed from
    its checkpoint ends with the same weights as a run that never stopped."""
    exports = []
    for run, stops in (("straight", ()), ("resumed", ("--stop_after", "2"))):
        config = training_workspace(str(tmp_path / run), stage_overrides={"optimizer": "adamw_8bit", "max_steps": 4,
                                                                          "save_every": 2})
        printed = _stage1(run_ranks, config, *stops)
        if stops:
            assert "stopped after step 2 of 4" in printed
            assert "resumed from" in _stage1(run_ranks, config)
        exports.append(load_file(str(tmp_path / run / "out" / "stage1" / "export" / "model.safetensors")))
    base = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    assert any(not torch.equal(base[k], exports[0][k]) for k in base)  # it trained
    assert all(torch.equal(exports[0][k], exports[1][k]) for k in base)


@pytest.mark.distributed
def test_the_gpu_zero3_config_trains_small_persistent_parameters(tmp_path, run_ranks):
    """ds_configs/zero3.json as a GPU run uses it (parameters under 1e5 elements stay whole on every rank, so the
    neuron deltas are persistent trainable parameters; overlap_comm on), in fp32 on 2 CPU ranks: it trains and
    the deltas land in the export of the layers that own them."""
    config = training_workspace(str(tmp_path))
    printed = _stage1(run_ranks, config, "--stage1.ds_config", "ds_configs/zero3.json")
    assert "trainable parameters" in printed
    base = load_file(str(tmp_path / "model" / "model.safetensors"))
    tuned = load_file(str(tmp_path / "out" / "stage1" / "export" / "model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(".mlp." in k for k in changed)
    assert all(torch.isfinite(v).all() for v in tuned.values())


def test_weights_load_straight_onto_an_accelerator():
    """On a GPU each rank loads the files onto its device (no whole-model copy in host memory); on CPU and under
    ZeRO-3 nothing changes (model_patches.loading.load_placement)."""
    from model_patches.loading import load_placement

    assert load_placement(torch.device("cuda", 3), zero3=False) == {"device_map": {"": torch.device("cuda", 3)}}
    assert load_placement(torch.device("cuda", 0), zero3=True) == {}
    assert load_placement(torch.device("cpu"), zero3=False) == {}


@pytest.mark.parametrize("strict", [False, True])
def test_deterministic_kernels_on_cuda_warn_or_raise(monkeypatch, strict):
    """``runtime.deterministic`` on a CUDA machine selects deterministic kernels; an op without one warns, or with
    ``runtime.strict_determinism`` raises (only CUDA's presence is faked: the settings are torch's own)."""
    from neurorit import runtime
    from neurorit.config import RuntimeConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for var in ("CUBLAS_WORKSPACE_CONFIG", "FLASH_ATTENTION_DETERMINISTIC"):
        monkeypatch.delenv(var, raising=False)
    try:
        runtime.start(RuntimeConfig(strict_determinism=strict), join_group=False)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled() is not strict
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and os.environ["FLASH_ATTENTION_DETERMINISTIC"] == "1"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = False


def test_mining_chunk_rows_auto_is_64_on_cpu_and_fills_an_accelerator(tmp_path, monkeypatch):
    from attribution import mine

    cfg_path = mining_workspace(str(tmp_path), chunk_rows="auto")
    out = str(tmp_path / "mined")
    mine.main(["--config", cfg_path, "--mining.output_dir", out])
    with open(os.path.join(out, "config.yaml")) as fh:
        assert yaml.safe_load(fh)["mining"]["chunk_rows"] == 64  # resolved before the run's fingerprint and config
    cfg = load_config(cfg_path)
    shape, dtype_bytes = mine._mining_shape(cfg)
    all_rows = shape.layers * cfg.mining.steps  # 8: one sweep per side of an example

    def rows_with(free: float, zero3: bool = False) -> int:
        monkeypatch.setattr(memory, "rank_memory_bytes", lambda device: int(free))
        return mine.resolve_chunk_rows(cfg, zero3)

    monkeypatch.setattr(mine.parallel, "info", lambda: SimpleNamespace(device=torch.device("cuda", 0)))
    fixed = memory.replicated_mining_bytes(shape, dtype_bytes, cfg.data.max_length, 0)
    per_row = memory.replicated_mining_bytes(shape, dtype_bytes, cfg.data.max_length, 1) - fixed
    assert rows_with(1e12) == all_rows
    assert rows_with((fixed + 5.5 * per_row) / mine.FIT_SHARE) == 5
    assert rows_with(fixed / mine.FIT_SHARE) == 1  # never 0: a run that does not fit fails on memory, not here
    monkeypatch.setattr(memory, "rank_memory_bytes", lambda device: int((fixed + 5.5 * per_row) / mine.FIT_SHARE))
    assert mine.resolve_chunk_rows(cfg, False, tail=2) == 2  # rows of two tokens: each costs two rows' memory
    explicit = load_config(cfg_path, ["--mining.chunk_rows", "7"])
    assert mine.resolve_chunk_rows(explicit, False) == 7
