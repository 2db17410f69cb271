"""Training monitor: TensorBoard scalars and a tqdm bar with ETA, on rank 0 only (other ranks get no-ops).

Scalars (tags): ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s``,
``train/trainable_params`` (at step 0) and ``dev/loss``. One run directory per stage (``<stage output>/tb``); a run
resumed after step N purges the events an interrupted run logged after N, so no curve holds a step twice.
"""
from __future__ import annotations

from typing import Optional

from neurorit import dist


class Monitor:
    def __init__(self, log_dir: str, total_steps: int, start_step: int, desc: str):
        self.writer = None
        self.bar = None
        if not dist.is_main():
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.writer = SummaryWriter(log_dir=log_dir, purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)

    def scalars(self, step: int, values: dict[str, Optional[float]]) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def print(self, message: str) -> None:
        if dist.is_main():
            (self.bar.write if self.bar is not None else print)(message)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.bar.close()
