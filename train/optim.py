"""Optimizers and learning-rate schedules for the training loop.

``adamw`` picks what runs best where it runs (DeepSpeed's CPU Adam under optimizer offload, its fused Adam on CUDA,
torch's AdamW otherwise); ``adamw_torch`` is always torch's; ``adamw_8bit`` is bitsandbytes' (for users on one
GPU), refused with a UserError where bitsandbytes cannot run. Schedules: linear warmup, then constant, linear or
cosine decay. Weight decay and lr come from the stage config; gradient clipping lives in the DeepSpeed config.
"""
from __future__ import annotations

import math

import torch

from neurorit.config import StageConfig
from neurorit.errors import UserError


def build_optimizer(params: list, st: StageConfig, ds_config: dict, device: torch.device) -> torch.optim.Optimizer:
    """``adamw``: DeepSpeed's CPU Adam under optimizer offload, its fused Adam on CUDA, torch's AdamW otherwise;
    ``adamw_torch``: torch's AdamW; ``adamw_8bit``: bitsandbytes (a UserError where it cannot run)."""
    kwargs = dict(lr=st.lr, weight_decay=st.weight_decay)
    if st.optimizer == "adamw_8bit":
        return _adamw_8bit(params, kwargs, device)
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if st.optimizer == "adamw" and offload != "none":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    if st.optimizer == "adamw" and device.type == "cuda":
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(params, adam_w_mode=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


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


def grad_norm(params: list) -> float:
    """L2 norm of the (already reduced) gradients, for engines that do not report one (no ZeRO)."""
    sq = sum(float(p.grad.detach().float().pow(2).sum()) for p in params if p.grad is not None)
    return math.sqrt(sq)
