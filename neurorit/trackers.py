"""Experiment trackers behind one small interface: TensorBoard, Weights & Biases and MLflow (``runtime.report_to``).

``open_trackers(names, log_dir, ...)`` returns one ``Tracker`` per name (rank 0 calls it; other ranks log
nothing); each logs scalars by step (``log``), the resolved config once at the start (``log_config``) and closes.
``check_trackers(names)`` refuses, with one line, an unknown name, a tracker whose library is not installed, or
environment settings a tracker would fail on after the model has loaded; it reads nothing but the installed
packages and the environment, so every rank can call it (config validation does, before any model loads) and all
stop alike.

- ``tensorboard``: event files in ``log_dir`` (a run resumed after step N purges what an interrupted run logged
  after N); the config as a text summary ``config``.
- ``wandb``: a run under ``<runs_dir>/wandb`` in the mode ``WANDB_MODE`` sets; with no ``WANDB_MODE`` it runs
  online when an API key is found (``WANDB_API_KEY`` or ``wandb login``'s netrc entry) and otherwise offline (for
  ``wandb sync``), saying so in one line; ``WANDB_MODE=online`` without a key is refused. The config as the run's
  config.
- ``mlflow``: a run in the tracking store ``MLFLOW_TRACKING_URI`` names (a server, a database, or a ``file:``
  folder, which MLflow 3 opens only with ``MLFLOW_ALLOW_FILE_STORE=true``: refused without it); with no URI, the
  local file store ``<runs_dir>/mlruns``, said in one line. The config as dotted params and a ``config.json``
  artifact.

``runs_dir`` is ``log_dir``'s parent (a stage's folder: ``<stage>/wandb``, ``<stage>/mlruns`` beside ``tensorboard/``; names from ``neurorit/run_layout.py``). A
resumed stage (``start_step > 0``) continues the wandb / MLflow run it started, whose id is kept in ``runs_dir``
(``wandb_run_id`` / ``mlflow_run_id``); a stage started from step 0 opens a new run.
"""
from __future__ import annotations

import importlib.util
import json
import netrc
import os
import time
from typing import Optional
from urllib.parse import urlparse

from neurorit.errors import UserError
from neurorit.files import atomic_write_text
from neurorit.run_layout import StageFiles

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> module it needs
NONE = "none"  # report_to: none = no tracker at all
WANDB_KEYLESS = ("offline", "dryrun", "disabled")  # WANDB_MODE values that need no API key
WANDB_KEYED = ("online", "run", "shared")
TRUE = ("1", "true", "yes", "on")


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
    if "wandb" in names:
        wandb_mode()
    if "mlflow" in names:
        mlflow_uri("")
    return names


def _wandb_key_found() -> bool:
    """An API key in ``WANDB_API_KEY`` or in the netrc entry ``wandb login`` writes for the server's host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode() -> tuple[str, str]:
    """(the mode wandb runs in, the line that says so when it was not asked for), or a one-line UserError."""
    asked = os.environ.get("WANDB_MODE", "").strip().lower()
    if asked and asked not in WANDB_KEYLESS + WANDB_KEYED:
        raise UserError(f"runtime.report_to has wandb but WANDB_MODE={asked!r} is not a wandb mode; set WANDB_MODE to "
                        f"online (with WANDB_API_KEY) or offline")
    if asked in WANDB_KEYLESS:
        return asked, ""
    if _wandb_key_found():
        return "online", ""
    if asked:
        raise UserError(f"runtime.report_to has wandb with WANDB_MODE={asked} but no API key: set WANDB_API_KEY (or "
                        f"run `wandb login`), or set WANDB_MODE=offline")
    return "offline", ("wandb: no WANDB_API_KEY and no WANDB_MODE set: recording offline in {dir} (upload with "
                       "`wandb sync {dir}`; set WANDB_API_KEY to log online, WANDB_MODE=offline to drop this line)")


def mlflow_uri(runs_dir: str) -> tuple[str, str]:
    """(the tracking URI mlflow records to, the line that says so when the environment named none), or a one-line
    UserError for a file store MLflow would refuse after the model has loaded."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        store = os.path.abspath(StageFiles(runs_dir).mlruns)
        return "file:" + store, (f"mlflow: MLFLOW_TRACKING_URI is not set: recording to the local file store {store} "
                                 f"(view with `mlflow ui --backend-store-uri file:{store}`; set MLFLOW_TRACKING_URI "
                                 f"to record elsewhere)")
    scheme = urlparse(uri).scheme
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in TRUE:
        raise UserError(f"runtime.report_to has mlflow with the file store MLFLOW_TRACKING_URI={uri}, which "
                        f"MLflow 3 opens only with MLFLOW_ALLOW_FILE_STORE=true: set it, or point "
                        f"MLFLOW_TRACKING_URI at a server")
    database = scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql")
    if database and importlib.util.find_spec("sqlalchemy") is None:
        raise UserError(f"runtime.report_to has mlflow with the database MLFLOW_TRACKING_URI={uri}, which needs "
                        f"sqlalchemy: pip install sqlalchemy alembic, or use a file: store or a server")
    return uri, ""


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
    """One tracker's run: scalars by step, the resolved config, close; ``note``: the line that names a mode the
    environment did not ask for (empty when it did)."""

    name = ""
    note = ""

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
    path = StageFiles(log_dir).run_id(name)
    if start_step and os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    return None


def _keep_run_id(log_dir: str, name: str, run_id: str) -> None:
    atomic_write_text(StageFiles(log_dir).run_id(name), run_id)


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, runs_dir: str, start_step: int, project: str, run_name: str):
        import wandb

        mode, note = wandb_mode()
        self.note = note.format(dir=os.path.abspath(StageFiles(runs_dir).wandb))
        previous = _run_id(runs_dir, self.name, start_step)
        os.makedirs(runs_dir, exist_ok=True)
        self.run = wandb.init(project=project, name=run_name or None, dir=runs_dir, id=previous, mode=mode,
                              resume="allow" if previous else None, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True))
        _keep_run_id(runs_dir, self.name, self.run.id)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, runs_dir: str, start_step: int, project: str, run_name: str):
        from mlflow.tracking import MlflowClient

        uri, self.note = mlflow_uri(runs_dir)
        if self.note:  # our own local store: MLflow 3 opens a file store only with this switch
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        self.client = MlflowClient(uri, registry_uri=uri)
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
        previous = _run_id(runs_dir, self.name, start_step)
        run = (self.client.get_run(previous) if previous else
               self.client.create_run(experiment_id, run_name=run_name or None))
        self.run_id = run.info.run_id
        _keep_run_id(runs_dir, self.name, self.run_id)
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
    """One opened tracker per name of ``report_to`` (checked first), with ``config`` logged when given; wandb and
    MLflow keep their local files in ``log_dir``'s parent, beside the TensorBoard folder."""
    out: list[Tracker] = []
    runs_dir = os.path.dirname(os.path.abspath(log_dir))
    for name in check_trackers(report_to):
        if name == "tensorboard":
            out.append(TensorBoardTracker(log_dir, start_step))
        elif name == "wandb":
            out.append(WandbTracker(runs_dir, start_step, project, run_name))
        else:
            out.append(MlflowTracker(runs_dir, start_step, project, run_name))
        if config is not None:
            out[-1].log_config(config)
    return out
