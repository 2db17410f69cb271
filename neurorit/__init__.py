"""Shared core of neuro-rit: the experiment config, user-facing errors, and the one module that wraps
every torch.distributed / DeepSpeed call (``neurorit.dist``)."""
