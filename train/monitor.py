"""Training monitor on rank 0 (other ranks get no-ops): trackers (``runtime.report_to``: TensorBoard by default,
Weights & Biases, MLflow; ``neurorit.trackers``), and progress as a tqdm bar on a terminal or, when stdout is not
a terminal (a SLURM ``.out`` file, a pipe), one plain line per logged step:
``stage1 step 20/500 | loss 0.4821 | lr 1.00e-05 | grad_norm 0.731 | tokens/s 1893 | elapsed 0:01:04 | eta 0:25:36``.

Scalars (tags): ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s``,
``train/trainable_params`` (at step 0) and ``dev/loss``. One run directory per stage (``<stage output>/tensorboard``, ``neurorit/run_layout.py``); a run
resumed after step N purges the TensorBoard events an interrupted run logged after N (and continues its wandb /
MLflow run), so no curve holds a step twice. The resolved config, when given, is logged once to every tracker.
"""
from __future__ import annotations

import sys
import time
from datetime import timedelta
from dataclasses import dataclass
from typing import Optional, Sequence, TextIO, Union

from neurorit import parallel
from neurorit.trackers import check_trackers, open_trackers

SHORT = {"train/loss": "loss", "train/lr": "lr", "train/grad_norm": "grad_norm", "train/tokens_per_s": "tokens/s",
         "dev/loss": "dev_loss"}  # the plain line's names, in its order
LINE_TAGS = ("train/loss", "dev/loss")  # scalars that make a plain line (not the step-0 parameter count)


def _number(tag: str, value: float) -> str:
    if tag == "train/lr":
        return f"{value:.2e}"
    if tag == "train/tokens_per_s":
        return f"{value:.0f}"
    return f"{value:.4f}" if tag.endswith("loss") else f"{value:.3g}"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(max(0.0, seconds))))


@dataclass(frozen=True)
class Tracking:
    """Where a stage reports (``runtime.report_to``, ``tracker_project``, ``run_name``) and the config it logs."""

    report_to: Union[Sequence[str], str] = ("tensorboard",)
    config: Optional[dict] = None
    project: str = "neuro-rit"
    run_name: str = ""


class Monitor:
    def __init__(self, log_dir: str, total_steps: int, start_step: int, desc: str, tracking: Tracking = Tracking(),
                 plain: Optional[bool] = None, stream: Optional[TextIO] = None):
        """``plain``: one line per logged step instead of a bar (default: when ``stream``, stdout by default, is
        not a terminal). ``tracking.report_to`` is checked on every rank, so a missing tracker library stops all
        alike."""
        check_trackers(tracking.report_to)
        self.trackers = []
        self.bar = None
        self.total, self.start, self.desc = total_steps, start_step, desc
        self.stream = stream if stream is not None else sys.stdout
        self.plain = (not getattr(self.stream, "isatty", lambda: False)()) if plain is None else plain
        self.began = time.perf_counter()
        if not parallel.is_main():
            return
        self.trackers = open_trackers(tracking.report_to, log_dir, start_step, tracking.project,
                                      tracking.run_name or desc, tracking.config)
        for tracker in self.trackers:  # a mode the environment did not ask for is said, once
            if tracker.note:
                print(tracker.note, file=self.stream, flush=True)
        if not self.plain:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)

    def scalars(self, step: int, values: dict[str, Optional[float]]) -> None:
        if not parallel.is_main():
            return
        present = {tag: float(v) for tag, v in values.items() if v is not None}
        for tracker in self.trackers:
            tracker.log(step, present)
        if self.plain and any(tag in present for tag in LINE_TAGS):
            self.print(self.line(step, present))

    def line(self, step: int, values: dict[str, float]) -> str:
        """The plain progress line of ``step``: the values, elapsed time and the ETA from this run's pace."""
        parts = [f"{self.desc} step {step}/{self.total}"]
        parts += [f"{SHORT[tag]} {_number(tag, values[tag])}" for tag in SHORT if tag in values]
        elapsed = time.perf_counter() - self.began
        done = step - self.start
        parts.append(f"elapsed {_clock(elapsed)}")
        if done > 0:
            parts.append(f"eta {_clock(elapsed / done * (self.total - step))}")
        return " | ".join(parts)

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def print(self, message: str) -> None:
        if not parallel.is_main():
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
        if self.bar is not None:
            self.bar.close()
            self.bar = None
