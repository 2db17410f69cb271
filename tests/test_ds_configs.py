"""The GPU DeepSpeed configs accumulate gradients in fp32 under bf16 (issue 20, item 3).

DeepSpeed's default ``grad_accum_dtype`` is the model dtype, so under ``bf16`` the ZeRO gradient partitions (and
the micro-batch sums that go into them) are bf16. ``data_types.grad_accum_dtype: fp32`` makes them fp32. The test
reads the configs as DeepSpeed reads them, then builds a real one-rank ZeRO-2 / ZeRO-3 engine in bf16 on CPU and
checks which dtype its optimizer accumulates in. ZeRO-0 must not carry the key: DeepSpeed refuses a bf16 model with
fp32 accumulation when ZeRO is off.
"""
import json
import os

import pytest
import torch

from tests.support.models import tiny_inputs, tiny_model
from tests.support.ranks import ROOT

torch.set_num_threads(1)
ACCUMULATING = ("zero2", "zero3", "zero3_offload")


def gpu_config(name: str) -> dict:
    with open(os.path.join(ROOT, "ds_configs", f"{name}.json")) as fh:
        cfg = json.load(fh)
    cfg.update(train_batch_size=2, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=2,
               gradient_clipping=1.0)
    return cfg


@pytest.mark.parametrize("name", ACCUMULATING)
def test_gpu_configs_accumulate_gradients_in_fp32(name):
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.config import DtypeEnum

    cfg = gpu_config(name)
    assert cfg["bf16"]["enabled"] is True
    parsed = DeepSpeedConfig(cfg)
    assert DtypeEnum(parsed.grad_accum_dtype).value == torch.float32


def test_zero0_leaves_accumulation_to_the_model_dtype():
    assert "data_types" not in gpu_config("zero0")


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_a_bf16_engine_on_the_gpu_config_accumulates_in_fp32(name, single_rank_env):
    import deepspeed

    from neurorit import parallel

    parallel.init_distributed()
    cfg = gpu_config(name)
    model = tiny_model("llama").to(torch.bfloat16)  # ZeRO-3 partitions it in ``initialize``
    params = list(model.parameters())
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=1e-3),
                                                   config=cfg, model_parameters=params)
    x = tiny_inputs(batch=1, seq=8)
    before = [p.detach().float().clone() for p in optimizer.fp32_partitioned_groups_flat] if name == "zero3" \
        else [g.detach().clone() for g in optimizer.single_partition_of_fp32_groups]
    for _ in range(2):  # one optimizer step of two micro-batches
        loss = engine(input_ids=x, labels=x).loss
        engine.backward(loss)
        engine.step()
    assert optimizer.gradient_accumulation_dtype == torch.float32
    assert engine.communication_data_type == torch.float32
    after = optimizer.fp32_partitioned_groups_flat if name == "zero3" else optimizer.single_partition_of_fp32_groups
    assert any(not torch.equal(b, a.detach().float()) for b, a in zip(before, after))  # the step really happened


@pytest.mark.parametrize("name", ["zero0", *ACCUMULATING])
def test_gpu_configs_reduce_gradients_across_ranks_in_fp32(name):
    from deepspeed.runtime.config import DeepSpeedConfig

    assert DeepSpeedConfig(gpu_config(name)).communication_data_type == torch.float32  # None: bf16 under bf16


def test_zero0_refuses_bf16_accumulation_over_micro_batches(single_rank_env):
    from neurorit import parallel
    from neurorit.errors import UserError

    parallel.init_distributed()
    path = os.path.join(ROOT, "ds_configs", "zero0.json")
    with pytest.raises(UserError, match="zero_stage 0 in bfloat16 would sum 2 micro-batches' gradients in bf16"):
        parallel.ds_config_for(0, 4, 2, path, "bfloat16")
    assert parallel.ds_config_for(0, 4, 4, path, "bfloat16")["gradient_accumulation_steps"] == 1
    assert parallel.ds_config_for(2, 4, 2, os.path.join(ROOT, "ds_configs", "zero2.json"), "bfloat16")
