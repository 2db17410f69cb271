"""Experiment trackers behind one small interface: TensorBoard, Weights & Biases and MLflow (``runtime.report_to``).

``open_trackers(names, log_dir, ...)`` returns one ``Tracker`` per name (rank 0 calls it; other ranks log
nothing); each logs scalars by step (``log``), the resolved config once at the start (``log_config``) and closes.
``check_trackers(names)`` refuses, with one line, an unknown name or a tracker whose library is not installed; it
reads nothing but the installed packages, so every rank can call it and all stop alike.

- ``tensorboard``: event files in ``log_dir`` (a run resumed after step N purges what an interrupted run logged
  after N); the config as a text summary ``config``.
- ``wandb``: a run under ``log_dir/wandb`` in the mode the environment sets (``WANDB_MODE=offline`` writes it
  locally for ``wandb sync``); the config as the run's config.
- ``mlflow``: a run in the tracking store the environment names (``MLFLOW_TRACKING_URI``: a server, a database,
  or a ``file:`` folder, which MLflow 3 opens only with ``MLFLOW_ALLOW_FILE_STORE=true``); the config as dotted
  params and a ``config.json`` artifact.

A resumed stage (``start_step > 0``) continues the wandb / MLflow run it started, whose id is kept in
``log_dir`` (``wandb_run_id`` / ``mlflow_run_id``); a stage started from step 0 opens a new run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from typing import Optional

from neurorit.errors import UserError
from neurorit.files import atomic_write_text

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> module it needs
NONE = "none"  # report_to: none = no tracker at all


def tracker_names(report_to) -> list[str]:
    """``runtime.report_to`` (a list, or a comma-separated string) as a list of names, ``none`` -> []."""
    names = [n.strip().lower() for n in (report_to.split(",") if isinstance(report_to, str) else report_to or [])]
    names = [n for n in names if n]
    return [] if names == [NONE] else names


def check_trackers(report_to) -> list[str]:
    """The tracker names, or a one-line UserError for an unknown one or one whose library is not installed."""
    names = tracker_names(report_to)
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"config key 'runtime.report_to': {name!r} is not a tracker; use any of "
                            f"{', '.join(TRACKERS)} (comma-separated), or {NONE}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise UserError(f"runtime.report_to asks for {name}, whose library is not installed here: pip install "
                            f"{TRACKERS[name]}, or drop {name} from runtime.report_to")
    return names


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """``{"stage1.lr": "1e-05", ...}``: a nested config as dotted keys and string values."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


class Tracker:
    """One tracker's run: scalars by step, the resolved config, close."""

    name = ""

    def log(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def log_config(self, config: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, log_dir: str, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=log_dir, purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log_config(self, config: dict) -> None:
        import yaml

        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def close(self) -> None:
        self.writer.close()


def _run_id(log_dir: str, name: str, start_step: int) -> Optional[str]:
    """The run id kept in ``log_dir`` by the run this one resumes (``start_step > 0``), else None."""
    path = os.path.join(log_dir, f"{name}_run_id")
    if start_step and os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    return None


def _keep_run_id(log_dir: str, name: str, run_id: str) -> None:
    atomic_write_text(os.path.join(log_dir, f"{name}_run_id"), run_id)


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, log_dir: str, start_step: int, project: str, run_name: str):
        import wandb

        previous = _run_id(log_dir, self.name, start_step)
        os.makedirs(log_dir, exist_ok=True)
        self.run = wandb.init(project=project, name=run_name or None, dir=log_dir, id=previous,
                              resume="allow" if previous else None, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True))
        _keep_run_id(log_dir, self.name, self.run.id)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, log_dir: str, start_step: int, project: str, run_name: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()  # MLFLOW_TRACKING_URI decides the store
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
        previous = _run_id(log_dir, self.name, start_step)
        run = (self.client.get_run(previous) if previous else
               self.client.create_run(experiment_id, run_name=run_name or None))
        self.run_id = run.info.run_id
        _keep_run_id(log_dir, self.name, self.run_id)
        self.resumed = previous is not None

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        if not self.resumed:  # params are write-once in MLflow; a resumed run has them already
            params = [Param(k, v[:6000]) for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):  # log_batch takes at most 100 params
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, config, "config.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_trackers(report_to, log_dir: str, start_step: int = 0, project: str = "neuro-rit",
                  run_name: str = "", config: Optional[dict] = None) -> list[Tracker]:
    """One opened tracker per name of ``report_to`` (checked first), with ``config`` logged when given."""
    out: list[Tracker] = []
    for name in check_trackers(report_to):
        if name == "tensorboard":
            out.append(TensorBoardTracker(log_dir, start_step))
        elif name == "wandb":
            out.append(WandbTracker(log_dir, start_step, project, run_name))
        else:
            out.append(MlflowTracker(log_dir, start_step, project, run_name))
        if config is not None:
            out[-1].log_config(config)
    return out
