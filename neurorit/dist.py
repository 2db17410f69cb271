"""The one place that talks to torch.distributed and DeepSpeed.

Launch conventions: the same entry works under ``deepspeed --num_gpus N``, ``torchrun`` and ``srun`` (SLURM
variables are mapped to RANK / WORLD_SIZE / LOCAL_RANK when the launcher did not set them). Backend: NCCL on
CUDA, gloo on CPU. Everything else in the project calls these helpers instead of ``torch.distributed`` or
``deepspeed`` directly, so the rules of DESIGN.md §5 live here: init before building the model, keep
``HfDeepSpeedConfig`` alive while loading under ZeRO-3, read weights only inside gathered scopes, rank 0 writes.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import datetime
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
import torch.distributed as tdist

from neurorit.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS_CONFIG_DIR = os.path.join(REPO_ROOT, "ds_configs")

# Long rank-0-only sections (mining, export) must not trip the collective timeout.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("NEURORIT_DIST_TIMEOUT_MIN", "120")))


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
        torch.cuda.set_device(lrank)
        device = torch.device("cuda", lrank)
    else:
        device = torch.device("cpu")
    if not tdist.is_initialized():
        import deepspeed

        backend = "nccl" if device.type == "cuda" else "gloo"
        if world == 1:  # a plain `python entry.py`: an in-memory one-rank group (no port, no MPI discovery)
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=str(lrank))
            tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1, timeout=DEFAULT_TIMEOUT)
        deepspeed.init_distributed(dist_backend=backend, timeout=DEFAULT_TIMEOUT)
        # Destroy the group at exit: a gloo rank left with a live group can abort at interpreter exit.
        atexit.register(shutdown)
    rank = tdist.get_rank() if tdist.is_initialized() else 0
    world = tdist.get_world_size() if tdist.is_initialized() else 1
    _INFO = DistInfo(rank=rank, world_size=world, local_rank=lrank, device=device)
    return _INFO


def info() -> DistInfo:
    return _INFO if _INFO is not None else init_distributed()


def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if tdist.is_initialized():
        tdist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place SUM across ranks (a no-op on one process). Integer counts and float64 sums only cross here."""
    if tdist.is_initialized() and world_size() > 1:
        dev = info().device
        moved = tensor.to(dev)
        tdist.all_reduce(moved, op=tdist.ReduceOp.SUM)
        tensor.copy_(moved.to(tensor.device))
    return tensor


def all_gather_objects(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not (tdist.is_initialized() and world_size() > 1):
        return [obj]
    out: list = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (tdist.is_initialized() and world_size() > 1):
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def shard_indices(n: int, rank_: Optional[int] = None, world: Optional[int] = None) -> list[int]:
    """Round-robin split of ``range(n)`` (rank r takes r, r+W, ...)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(range(r, n, w))


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


# ------------------------------------------------------------------------------------------ DeepSpeed config
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


@contextlib.contextmanager
def gathered(params: Iterable[torch.nn.Parameter], modifier_rank: Optional[int] = None):
    """Full weights inside the block: a ZeRO-3 gather when partitioned, nothing otherwise."""
    params = [p for p in params]
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield
    else:
        yield


@contextlib.contextmanager
def zero3_loading(ds_config: Optional[dict]):
    """Keep ``HfDeepSpeedConfig`` alive while ``from_pretrained`` runs so weights load partitioned."""
    if ds_config is None or ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield None
        return
    from transformers.integrations import HfDeepSpeedConfig

    keep = HfDeepSpeedConfig(copy.deepcopy(ds_config))
    try:
        yield keep
    finally:
        del keep
