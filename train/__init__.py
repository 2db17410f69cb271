"""train: Neuro-RIT stage 1 and stage 2 (and the baselines) on one shared DeepSpeed training loop.

Entries ``train/stage1.py`` and ``train/stage2.py``; the loop in ``loop.py``; stage data and the step plan in
``data.py``; which parameters train in ``trainable.py``; optimizers and schedules in ``optim.py``; checkpoints
and resume in ``checkpoint.py``; TensorBoard and the progress bar in ``monitor.py``.
"""
