"""GPU day one (issue 28), on CPU: what would break on a GPU cluster before any GPU runs, each exercised with fake
devices, a monkeypatched ``torch.cuda``, real 2-rank gloo DeepSpeed runs or static checks."""
import os
import subprocess
import sys

import pytest

from tests.support.ranks import ROOT, child_env

# A rank of `srun --gpus-per-task=1`: SLURM_LOCALID 3 on a node, but the task sees one GPU. DeepSpeed's engine and
# zero.Init call set_device(LOCAL_RANK), so LOCAL_RANK must name a visible device before DeepSpeed starts.
_SLURM_RANK = """
import os, torch, deepspeed
from neurorit.parallel import launch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.set_device = lambda index: print("set_device", index)
def stop(*args, **kwargs):
    print("LOCAL_RANK before DeepSpeed", os.environ["LOCAL_RANK"])
    raise SystemExit(0)
deepspeed.init_distributed = stop
launch.init_distributed()
"""


def test_srun_one_gpu_per_task_gives_deepspeed_local_rank_0():
    env = {k: v for k, v in child_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(SLURM_PROCID="3", SLURM_LOCALID="3", SLURM_STEP_NUM_TASKS="4", SLURM_JOB_NODELIST="gpu1")
    out = subprocess.run([sys.executable, "-c", _SLURM_RANK], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "set_device 0" in out.stdout and "LOCAL_RANK before DeepSpeed 0" in out.stdout, out.stdout
