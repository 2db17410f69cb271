"""Console entry points of the training stages (``pyproject.toml`` ``[project.scripts]``): ``neurorit-train-stage1``
and ``neurorit-train-stage2`` run ``train/stage1.py`` / ``train/stage2.py`` with the same flags, under any launcher:

    deepspeed --num_gpus 8 $(which neurorit-train-stage1) --config configs/x.yaml
    torchrun --nproc_per_node 8 --no-python neurorit-train-stage1 --config configs/x.yaml

``train/stage1.py`` and ``train/stage2.py`` call them too. A console script exits with what its function returns, so
these return 0 (the stage's summary is on disk); a rank of several ends through ``parallel.end_process``.
"""
from __future__ import annotations

from neurorit import parallel
from train.loop import main


def stage1() -> int:
    main("stage1")
    parallel.end_process()
    return 0


def stage2() -> int:
    main("stage2")
    parallel.end_process()
    return 0
