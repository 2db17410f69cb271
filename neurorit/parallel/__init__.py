"""The one place that talks to torch.distributed and DeepSpeed (docs/DESIGN.md §5), split by job:

- ``launch``: the launcher's environment (``deepspeed``, ``torchrun``, ``srun``), process-group init, this rank's
  device, deterministic kernels, cuBLAS's full-precision reductions for attribution, shutdown and
  ``end_process`` (the clean end of a launched rank);
- ``workarounds``: DeepSpeed's start-up hazards (stale build lock, the /dev/shm buffer it never unlinks);
- ``collectives``: ``rank``, ``barrier``, ``all_reduce_sum``, ``all_gather_objects``, ...;
- ``ds_config``: ``ds_configs/`` JSONs with batch sizes filled from the world size;
- ``strategy``: the ``Strategy`` (prepare frozen / trainable models) and its ``TrainEngine``, ``gathered``,
  ``zero3_loading``, ``to_universal`` (a checkpoint any world size can load);
- ``optim``: the optimizer factory and the learning-rate schedule;
- ``estimator``: DeepSpeed's ZeRO-3 memory estimators, the cross-check of the memory model (``neurorit/memory.py``,
  which needs no DeepSpeed).

Library code imports this package (``from neurorit import parallel``) and uses the names below; no other module
imports ``deepspeed`` or ``torch.distributed``.
"""
from neurorit.parallel.collectives import (all_gather_objects, all_reduce_sum, barrier, broadcast_object, is_main, rank,
                                       shard_indices, world_size)
from neurorit.parallel.ds_config import DS_CONFIG_DIR, ds_config_for
from neurorit.parallel.launch import (DistInfo, end_process, exact_reductions, info, init_distributed,
                                     make_deterministic, shutdown)
from neurorit.parallel.optim import build_optimizer, lr_factor, optimizer_name
from neurorit.parallel.strategy import Strategy, TrainEngine, gathered, to_universal, zero3_loading

__all__ = ["DS_CONFIG_DIR", "DistInfo", "Strategy", "TrainEngine", "all_gather_objects", "all_reduce_sum", "barrier",
           "broadcast_object", "build_optimizer", "ds_config_for", "end_process", "exact_reductions", "gathered",
           "info", "init_distributed", "is_main", "lr_factor", "make_deterministic", "optimizer_name", "rank",
           "shard_indices", "shutdown", "to_universal", "world_size", "zero3_loading"]
