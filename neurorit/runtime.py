"""The one runtime start of every entry point (mining, both training stages, evaluation, evidence writing):
deterministic kernels (before any CUDA work), the process group and this rank's device, torch's thread count, and
the seeds of Python's and torch's global generators, all from ``runtime.*`` of the experiment config."""
from __future__ import annotations

import random
from typing import Optional

import torch

from neurorit import dist
from neurorit.config import RuntimeConfig


def start(runtime: RuntimeConfig, local_rank: Optional[int] = None) -> dist.DistInfo:
    """Start this process's part of a run; idempotent for the distributed init. Returns the rank's ``DistInfo``."""
    dist.make_deterministic(runtime.deterministic)
    info = dist.init_distributed(local_rank)
    if runtime.torch_threads > 0:
        torch.set_num_threads(runtime.torch_threads)
    random.seed(runtime.seed)
    torch.manual_seed(runtime.seed)
    return info
