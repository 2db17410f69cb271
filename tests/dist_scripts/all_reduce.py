"""Two ranks: initialise, all-reduce each rank's (rank + 1), then (rank 0) print the sum and count the /dev/shm buffers
DeepSpeed's CPU all-reduce left under this run's port (tests/test_dist_shm.py)."""
import glob
import os

import torch

from neurorit import dist
from neurorit.dist import workarounds

dist.init_distributed()
total = dist.all_reduce_sum(torch.tensor([float(dist.rank() + 1)]))
dist.barrier()
left = glob.glob(os.path.join(workarounds.SHM_DIR, f"deepspeed_allreduce_buffer_*_{os.environ['MASTER_PORT']}_*"))
if dist.is_main():
    print(f"sum {total.item():.0f} left {len(left)}", flush=True)
