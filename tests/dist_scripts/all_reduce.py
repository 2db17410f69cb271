"""Two ranks: initialise, all-reduce each rank's (rank + 1), then (rank 0) print the sum and count the /dev/shm buffers
DeepSpeed's CPU all-reduce left under this run's port (tests/test_dist_shm.py)."""
import glob
import os

import torch

from neurorit import parallel
from neurorit.parallel import workarounds

parallel.init_distributed()
total = parallel.all_reduce_sum(torch.tensor([float(parallel.rank() + 1)]))
parallel.barrier()
left = glob.glob(os.path.join(workarounds.SHM_DIR, f"deepspeed_allreduce_buffer_*_{os.environ['MASTER_PORT']}_*"))
if parallel.is_main():
    print(f"sum {total.item():.0f} left {len(left)}", flush=True)
