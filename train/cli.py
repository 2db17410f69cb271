"""Console entry points of the training stages (``pyproject.toml`` ``[project.scripts]``): ``neurorit-train-stage1``
and ``neurorit-train-stage2`` run ``train/stage1.py`` / ``train/stage2.py`` with the same flags, under any launcher:

    deepspeed --num_gpus 8 $(which neurorit-train-stage1) --config configs/x.yaml
    torchrun --nproc_per_node 8 --no-python neurorit-train-stage1 --config configs/x.yaml

A console script exits with what its function returns, so these return 0 (the stage's summary is on disk).
"""
from __future__ import annotations

from train.loop import main


def stage1() -> int:
    main("stage1")
    return 0


def stage2() -> int:
    main("stage2")
    return 0
