"""Two ranks end through ``parallel.end_process`` (tests/test_dist_exit.py): an exit handler registered by the work runs
while the process group is still alive, and nothing after ``end_process`` runs."""
import atexit

import torch
import torch.distributed as tdist

from neurorit import parallel

parallel.init_distributed()
total = parallel.all_reduce_sum(torch.tensor([float(parallel.rank() + 1)]))
atexit.register(lambda: print(f"handler rank {parallel.rank()} group alive {tdist.is_initialized()}", flush=True))
print(f"rank {parallel.rank()} sum {total.item():.0f}", end="")  # unflushed: end_process must flush it
parallel.end_process()
print("after end_process", flush=True)
