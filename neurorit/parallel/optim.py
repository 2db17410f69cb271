"""The optimizer factory and the learning-rate schedule of the training loop.

Which Adam runs best depends on DeepSpeed's offload settings and the device (``build_optimizer``); the schedule is
linear warmup, then constant, linear or cosine decay (``lr_factor``, a LambdaLR multiplier). Weight decay and lr
come from the stage config; gradient clipping lives in the DeepSpeed config.
"""
from __future__ import annotations

import math
import sys
from typing import Optional

import torch

from neurorit.parallel.launch import info
from neurorit.errors import UserError


def build_optimizer(params: list, name: str, lr: float, weight_decay: float, offloaded: bool = False,
                    device: Optional[torch.device] = None) -> torch.optim.Optimizer:
    """``adamw``: DeepSpeed's CPU Adam under optimizer offload, its fused Adam on CUDA, torch's AdamW otherwise;
    ``adamw_torch``: torch's AdamW; ``adamw_8bit``: bitsandbytes (a UserError where it cannot run).

    DeepSpeed compiles its Adam kernels on first use: where that fails (no nvcc, a CUDA_HOME of another version, a
    read-only environment) the fused Adam falls back to torch's AdamW, the same update, with one line saying what
    failed and what was chosen, instead of stopping the job. Under optimizer offload DeepSpeed accepts its CPU Adam
    only, so there the failure, and any other optimizer name, stops with one line before DeepSpeed starts."""
    kwargs = dict(lr=lr, weight_decay=weight_decay)
    device = device or info().device
    if offloaded and name != "adamw":
        raise UserError(f"optimizer {name} cannot run with optimizer offload: DeepSpeed offloads only its own CPU "
                        f"Adam; use --stageN.optimizer adamw, or a ds_config without offload_optimizer")
    if name == "adamw_8bit":
        return _adamw_8bit(params, kwargs, device)
    if name == "adamw" and offloaded:
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
        except Exception as err:  # a failed build: offload has no other optimizer to fall back to
            raise UserError(f"optimizer offload needs DeepSpeed's CPU Adam, which failed to build "
                            f"({_first_line(err)}); fix the build (TORCH_EXTENSIONS_DIR, a C++ compiler) or use a "
                            f"ds_config without offload_optimizer") from None
    if name == "adamw" and device.type == "cuda":
        try:
            from deepspeed.ops.adam import FusedAdam

            return FusedAdam(params, adam_w_mode=True, **kwargs)
        except Exception as err:  # nvcc missing or of another CUDA version, a read-only extensions folder, ...
            print(f"warning: optimizer adamw: DeepSpeed's FusedAdam failed to build ({_first_line(err)}); using "
                  f"torch.optim.AdamW instead (the same update, somewhat slower; the build needs ninja on PATH and "
                  f"nvcc of torch's CUDA version; train_summary.json names the optimizer that ran)",
                  file=sys.stderr, flush=True)
    return torch.optim.AdamW(params, **kwargs)


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The class that runs the updates (``train_summary.json``'s ``optimizer``): a FusedAdam that fell back shows
    as torch's AdamW."""
    cls = type(optimizer)
    return f"{cls.__module__}.{cls.__qualname__}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _adamw_8bit(params: list, kwargs: dict, device: torch.device) -> torch.optim.Optimizer:
    """bitsandbytes AdamW8bit, after one probe step on this device so that a broken install fails here, clearly."""
    try:
        import bitsandbytes as bnb

        probe = torch.nn.Parameter(torch.zeros(4096, device=device))
        probe.grad = torch.ones_like(probe)
        bnb.optim.AdamW8bit([probe], lr=1e-3).step()
    except Exception as err:  # an import error, a missing native library, an unsupported device: all alike
        raise UserError(f"optimizer adamw_8bit needs bitsandbytes, which cannot run on {device.type} here "
                        f"({type(err).__name__}: {err}); use --stageN.optimizer adamw") from None
    return bnb.optim.AdamW8bit(params, **kwargs)





def lr_factor(schedule: str, warmup: int, total: int):
    """Multiplier of the base lr at optimizer step ``s`` (0-based): linear warmup, then constant/linear/cosine."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / (warmup + 1)
        progress = (s - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0
    return factor
