"""A training stage entry (``train/stage1.py`` / ``train/stage2.py``) with faults injected from the environment,
under any launcher or as a plain process:

    torchrun --nproc_per_node 2 tests/faults/dist_stage.py stage1 --config X [--resume auto ...]

- ``NEURORIT_FAULT_NAN=<step>:<what>[:<rank>]``: at optimizer step ``<step>`` (1-based, as the error names it) the
  training loss is ``nan`` (``what`` = ``loss``), ``inf`` (``inf``), or finite with a ``nan`` gradient
  (``grad``: only the grad norm is non-finite); on every rank, or only on ``<rank>``.
- ``NEURORIT_FAULT_EXPORT_KILL=<shard>:<fraction>``: rank 0 writes the first ``fraction`` of the bytes of
  export shard number ``<shard>`` (0-based) and then SIGKILLs itself: a kill -9 in the middle of an export write.

Without those variables it is exactly the stage entry.
"""
from __future__ import annotations

import os
import signal
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


class _NaNGrad(torch.autograd.Function):
    """Identity forward, ``nan`` backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison(loss: torch.Tensor, what: str) -> torch.Tensor:
    if what == "loss":
        return loss * float("nan")
    if what == "inf":
        return loss * float("inf")
    if what == "grad":
        return _NaNGrad.apply(loss)
    raise ValueError(f"NEURORIT_FAULT_NAN: unknown kind {what!r}; use loss, inf or grad")


def install_nan(spec: str) -> None:
    """Wrap the training step (to know the step) and its loss (``loop.label_loss``) to poison that step's loss;
    the dev loss, computed between steps, is left alone."""
    from neurorit import parallel
    from train import loop

    parts = spec.split(":")
    at, what = int(parts[0]), parts[1]
    only = int(parts[2]) if len(parts) > 2 else None
    current = {"step": -1}
    step_fn, loss_fn = loop._train_step, loop.label_loss

    def train_step(engine, plan, step, examples, pad_id):
        current["step"] = step + 1
        try:
            return step_fn(engine, plan, step, examples, pad_id)
        finally:
            current["step"] = -1

    def label_loss(engine, batch, reduction="mean"):
        loss = loss_fn(engine, batch, reduction)
        if current["step"] == at and (only is None or parallel.rank() == only):
            loss = poison(loss, what)
        return loss

    loop._train_step = train_step
    loop.label_loss = label_loss


def install_export_kill(spec: str) -> None:
    from model_patches import export

    shard, fraction = spec.split(":")
    shard, fraction = int(shard), float(fraction)
    save_file, count = export.save_file, {"n": 0}

    def save(tensors, path, metadata=None):
        save_file(tensors, path, metadata=metadata)
        if count["n"] == shard:
            size = os.path.getsize(path)
            with open(path, "r+b") as fh:
                fh.truncate(int(size * fraction))
            os.kill(os.getpid(), signal.SIGKILL)
        count["n"] += 1

    export.save_file = save


def main() -> None:
    stage, argv = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)
    if os.environ.get("NEURORIT_FAULT_NAN"):
        install_nan(os.environ["NEURORIT_FAULT_NAN"])
    if os.environ.get("NEURORIT_FAULT_EXPORT_KILL"):
        install_export_kill(os.environ["NEURORIT_FAULT_EXPORT_KILL"])
    from train.loop import main as stage_main

    stage_main(stage, argv)


if __name__ == "__main__":
    main()
