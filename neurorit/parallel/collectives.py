"""Collectives as plain functions (a no-op or identity on one process): ``rank``, ``world_size``, ``is_main``,
``barrier``, ``all_reduce_sum``, ``all_gather_objects``, ``broadcast_object``, ``shard_indices``. Integer counts and
float64 sums are what crosses ranks (docs/DESIGN.md §2: the mined map is the same on 1 rank or 512)."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as tdist

from neurorit.parallel.launch import info

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


