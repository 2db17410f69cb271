"""train: Neuro-RIT stage 1 and stage 2 (and the baselines) on one shared DeepSpeed training loop.

Entries ``train/stage1.py`` and ``train/stage2.py`` (console scripts through ``cli.py``); the loop in
``loop.py``; what each kind of trainable set trains in ``recipes.py``; which neurons and layers train and their
counts in ``trainable.py``; the LoRA baseline in ``lora.py``; stage data and the step plan in ``data.py``;
checkpoints and resume in ``checkpoint.py``; trackers and the progress lines in ``monitor.py``. The optimizer and
its schedule come from ``neurorit.parallel``.
"""
