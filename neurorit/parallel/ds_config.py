"""DeepSpeed configs: a ``ds_configs/`` JSON loaded with its batch sizes filled from the world size and the run's
dtype; no "auto" value is accepted."""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from neurorit.parallel.collectives import world_size
from neurorit.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DS_CONFIG_DIR = os.path.join(REPO_ROOT, "ds_configs")


def ds_config_for(zero_stage: int, batch_size: int, micro_batch_size: int, path: str = "",
                  dtype: str = "float32", grad_clip: float = 1.0) -> dict:
    """Load a ds_configs/ JSON and fill the batch sizes from the world size (no "auto" anywhere)."""
    world = world_size()
    if not path:
        name = f"zero{zero_stage}.json"
        if not torch.cuda.is_available():
            name = f"cpu_zero{zero_stage}.json"
        path = os.path.join(DS_CONFIG_DIR, name)
    if not os.path.isfile(path):
        raise UserError(f"DeepSpeed config not found: {path}")
    with open(path) as fh:
        cfg = json.load(fh)
    if batch_size % (micro_batch_size * world) != 0:
        raise UserError(
            f"batch_size {batch_size} must be a multiple of micro_batch_size {micro_batch_size} x world size {world}"
        )
    cfg["train_batch_size"] = batch_size
    cfg["train_micro_batch_size_per_gpu"] = micro_batch_size
    cfg["gradient_accumulation_steps"] = batch_size // (micro_batch_size * world)
    if zero_stage == 0 and dtype == "bfloat16" and cfg["gradient_accumulation_steps"] > 1:
        raise UserError(f"zero_stage 0 in bfloat16 would sum {cfg['gradient_accumulation_steps']} micro-batches' "
                        f"gradients in bf16 (DeepSpeed has no fp32 accumulation without ZeRO): use zero_stage 2 or 3, "
                        f"or micro_batch_size = batch_size / world size ({batch_size // world})")
    cfg["gradient_clipping"] = grad_clip
    cfg.pop("bf16", None)
    cfg.pop("fp16", None)
    if dtype == "bfloat16":
        cfg["bf16"] = {"enabled": True}
    elif dtype == "float16":
        cfg["fp16"] = {"enabled": True}
    cfg.setdefault("zero_optimization", {})["stage"] = zero_stage
    _reject_auto(cfg, path)
    return cfg


def _reject_auto(node: Any, path: str, key: str = "") -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _reject_auto(v, path, f"{key}.{k}" if key else k)
    elif node == "auto":
        raise UserError(f"{path}: '{key}' is \"auto\"; ds_configs hold concrete values only")

