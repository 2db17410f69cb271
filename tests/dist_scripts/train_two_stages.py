"""Run under ``deepspeed --num_gpus 2``: the stage-1 then the stage-2 entry script, as scripts, in one launch
(one start-up instead of two). Arguments are passed to both entries, e.g. ``--config X``."""
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    args = sys.argv[1:]
    for entry in ("stage1.py", "stage2.py"):
        path = os.path.join(ROOT, "train", entry)
        sys.argv = [path] + args
        runpy.run_path(path, run_name="__main__")
