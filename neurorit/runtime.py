"""The one runtime start of every entry point (mining, both training stages, evaluation, evidence writing):
deterministic kernels (before any CUDA work), the process group and this rank's device, torch's thread count, and
the seeds of Python's and torch's global generators, all from ``runtime.*`` of the experiment config; and the
FutureWarnings DeepSpeed's ZeRO-3 triggers on every step (it calls torch's deprecated ``all_gather_into_tensor`` /
``reduce_scatter_tensor``: ``QUIET``), silenced by their text, nothing else. Also the
CPU kernel pin (``PINNED_KERNELS``) that the demo puts into the environment of every process it starts: it must be
set before torch is imported, so it travels as environment variables, not as a call."""
from __future__ import annotations

import platform
import random
import warnings
from typing import Optional

import torch

from neurorit import parallel
from neurorit.config import RuntimeConfig

# Bit-reproducible across x86 hosts: torch, MKL and oneDNN pick their kernels by the CPU's instruction set, and
# AVX-512 and AVX2 kernels round differently (the full fine-tuning baseline drifts visibly). Pin all three to AVX2,
# which every x86-64 host of the last decade has; an explicit setting in the environment wins.
PINNED_KERNELS = ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
                  if platform.machine() in ("x86_64", "AMD64") else {})
# DeepSpeed's own calls of torch's deprecated collectives: two FutureWarning lines per training step otherwise
QUIET = (r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
         r"`torch\.distributed\.reduce_scatter_tensor` is deprecated")


def start(runtime: RuntimeConfig, local_rank: Optional[int] = None,
          join_group: bool = True) -> Optional[parallel.DistInfo]:
    """Start this process's part of a run; idempotent for the distributed init. Returns the rank's ``DistInfo``,
    or None with ``join_group`` False (an engine that starts its own workers, vLLM, must find no process group
    and no CUDA context)."""
    for message in QUIET:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    parallel.make_deterministic(runtime.deterministic, strict=runtime.strict_determinism)
    info = parallel.init_distributed(local_rank) if join_group else None
    if runtime.torch_threads > 0:
        torch.set_num_threads(runtime.torch_threads)
    random.seed(runtime.seed)
    torch.manual_seed(runtime.seed)
    return info
