"""Starting and ending a distributed run: the launcher's environment (``deepspeed``, ``torchrun``, ``srun``),
process-group init, the device of this rank, deterministic kernels, and clean shutdown.

Under ``srun`` (one task per rank) the torch variables are filled from SLURM's when no launcher set them. Backend:
NCCL on CUDA, gloo on CPU. DeepSpeed's start-up workarounds live in ``neurorit/parallel/workarounds.py``.
"""
from __future__ import annotations

import atexit
import datetime
import gc
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as tdist

from neurorit.parallel.workarounds import announce_op_build, clear_stale_build_lock, unlink_shm_buffer

# How long a hung collective holds the job's GPUs (NEURORIT_DIST_TIMEOUT_MIN, minutes). Long rank-0-only sections
# (writing mining's outputs, converting a checkpoint to the universal form) must fit in it: raise it for those.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("NEURORIT_DIST_TIMEOUT_MIN", "30")))


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


_INFO: Optional[DistInfo] = None


def _map_slurm_env() -> None:
    """Under ``srun`` (one task per rank) fill the torch variables from SLURM's when no launcher set them."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    ntasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))  # set by srun steps, not by a batch shell
    if ntasks <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = str(ntasks)
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_PORT", "29500")
    if "MASTER_ADDR" not in os.environ:
        nodelist = os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
        os.environ["MASTER_ADDR"] = _first_host(nodelist)


def _first_host(nodelist: str) -> str:
    """First host of a SLURM nodelist like ``node[01-04,07],gpu2`` without calling scontrol."""
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        first = rest.rstrip("]").split(",")[0].split("-")[0]
        return prefix + first
    return head


def init_distributed(local_rank: Optional[int] = None) -> DistInfo:
    """Initialise once (idempotent); a single process without a launcher gets a one-rank group."""
    global _INFO
    if _INFO is not None:
        return _INFO
    _map_slurm_env()
    if local_rank is not None and local_rank >= 0:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    lrank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        index = cuda_index(lrank, torch.cuda.device_count())
        # DeepSpeed's engine and zero.Init call set_device(LOCAL_RANK) themselves: under --gpus-per-task=1 the
        # node-local rank (SLURM_LOCALID 3) is not a visible ordinal, so LOCAL_RANK becomes the device index.
        os.environ["LOCAL_RANK"] = str(index)
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    if not tdist.is_initialized():
        clear_stale_build_lock()
        if device.type == "cpu":
            announce_op_build(lrank)
        import deepspeed

        backend = "nccl" if device.type == "cuda" else "gloo"
        if world == 1:  # a plain `python entry.py`: an in-memory one-rank group (no port, no MPI discovery)
            os.environ.update(RANK="0", WORLD_SIZE="1")
            os.environ.setdefault("LOCAL_RANK", str(lrank))
            tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1, timeout=DEFAULT_TIMEOUT)
        deepspeed.init_distributed(dist_backend=backend, timeout=DEFAULT_TIMEOUT)
        unlink_shm_buffer()
        # Destroy the group at exit: a gloo rank left with a live group can abort at interpreter exit.
        atexit.register(shutdown)
    rank = tdist.get_rank() if tdist.is_initialized() else 0
    world = tdist.get_world_size() if tdist.is_initialized() else 1
    _INFO = DistInfo(rank=rank, world_size=world, local_rank=lrank, device=device)
    return _INFO


def cuda_index(local_rank: int, visible: int) -> int:
    """The CUDA device of this rank among the ``visible`` ones. One process per GPU on a node sees them all and
    takes its local rank; under ``srun --gpus-per-task=1`` (or any binding that shows each task only its own
    GPUs) every task sees device 0 as its GPU, whatever its local rank."""
    if local_rank < visible:
        return local_rank
    if visible == 1:
        return 0
    raise RuntimeError(f"local rank {local_rank} but {visible} visible CUDA devices: bind one GPU per task "
                       f"(--gpus-per-task=1) or all of a node's GPUs to every task")


def make_deterministic(on: bool = True, strict: bool = False) -> None:
    """``runtime.deterministic`` (default on): bit-reproducible training on GPUs too. Call before any CUDA work.

    On CPU nothing is needed: with a fixed seed and kernel path (the demo pins the x86 kernels
    to AVX2, see the README) every reduction here is in a fixed order. On CUDA, atomics in the embedding backward,
    attention backward kernels and cuBLAS split-K vary run to run; this selects deterministic kernels, which costs
    speed there (roughly 5-20%, mostly attention backward; not measured here). An op that has no deterministic
    kernel warns and runs anyway; with ``strict`` (``runtime.strict_determinism``) it raises, naming the op, so a
    run that finishes is reproducible.
    """
    if on and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        os.environ.setdefault("FLASH_ATTENTION_DETERMINISTIC", "1")  # read by transformers' FlashAttention-2 path
        torch.use_deterministic_algorithms(True, warn_only=not strict)
        torch.backends.cudnn.benchmark = False


def exact_reductions(device: torch.device, dtype: str) -> bool:
    """For attribution in bf16/fp16 on CUDA: cuBLAS may reduce a half-precision matmul partly in that precision
    (split-K), so the bounds ``tests/test_bf16_ig.py`` measures on CPU (fp32 accumulation) would not hold. Turns
    that off for this process; True where it did (the caller says so). Nothing changes on CPU or in fp32."""
    if device.type != "cuda" or dtype not in ("bfloat16", "float16"):
        return False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    return True


def info() -> DistInfo:
    return _INFO if _INFO is not None else init_distributed()



def shutdown() -> None:
    """At exit: collect what is left (DeepSpeed engines sit in reference cycles) while the group is still alive,
    then destroy the group. An engine finalised after the group is gone can abort the process at exit."""
    if tdist.is_initialized():
        gc.collect()
        tdist.destroy_process_group()


def end_process() -> None:
    """The successful end of a launched entry point (``__main__`` of mining, the stages, evaluation, evidence, and
    their console scripts), on every rank of a group of several: a barrier (every rank's work is done), then the
    exit handlers now, while the interpreter is whole (trackers close; ``shutdown`` destroys the group), then
    stdout/stderr flushed and ``os._exit(0)``.

    Why not a plain return: a gloo rank that reaches interpreter finalization can still abort with "terminate
    called without an active exception" (SIGABRT) after its work is done and written (seen once in CI, on rank 1
    of a 2-rank SLURM mining job, after the final barrier; pytorch/pytorch#190489, #179291). Under SLURM that
    failed step stops the ``--dependency=afterok`` chain. Skipping finalization cannot lose output: every file is
    written atomically before this, and the exit handlers have run. A single process, or a run without a process
    group (the vLLM backend), returns normally."""
    if not (tdist.is_initialized() and tdist.get_world_size() > 1):
        return
    tdist.barrier()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)

