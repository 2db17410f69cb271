"""Run under ``deepspeed --num_gpus 2``: stage 1 then stage 2, in one launch (one start-up instead of two), through
what ``train/stage1.py`` and ``train/stage2.py`` run (``train.loop.main``; the scripts end their process with
``parallel.end_process``, so this calls it once, after both). Arguments are passed to both, e.g. ``--config X``."""
import sys

from neurorit import parallel
from train.loop import main

if __name__ == "__main__":
    for stage in ("stage1", "stage2"):
        main(stage, sys.argv[1:])
    parallel.end_process()
