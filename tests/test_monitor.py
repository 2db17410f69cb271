"""The training monitor (train/monitor.py) and its trackers (neurorit/trackers.py), each for real: TensorBoard
event files, a Weights & Biases run in offline mode, an MLflow run in a local file store; the resolved config
logged; a resumed stage continuing its run; rank 0 only; a missing tracker library as one line; and the plain
progress line when stdout is not a terminal."""
from __future__ import annotations

import glob
import io
import json
import os
import time

import pytest

from neurorit import parallel
from neurorit.config import load_config
from neurorit.errors import UserError
from train import monitor as monitor_mod
from train.monitor import Monitor, Tracking

CONFIG = {"stage1": {"lr": 1e-5, "method": "neurorit"}, "runtime": {"report_to": ["tensorboard"]}}
LOSSES = [0.9, 0.7, 0.5]


def _run(log_dir: str, report_to, start: int = 0, steps=LOSSES, close: bool = True, **kw) -> Monitor:
    mon = Monitor(str(log_dir), total_steps=10, start_step=start, desc="stage1",
                  tracking=Tracking(report_to, CONFIG, **kw), plain=True, stream=io.StringIO())
    for i, loss in enumerate(steps, start=start + 1):
        mon.scalars(i, {"train/loss": loss, "train/lr": 1e-5, "train/grad_norm": None})
    if close:
        mon.close()
    return mon


def test_tensorboard_scalars_and_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run(tmp_path, "tensorboard")
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("train/loss")] == [(1, 0.9), (2, 0.7), (3, 0.5)]
    assert "train/grad_norm" not in acc.Tags()["scalars"]  # None is not logged
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "lr: 1.0e-05" in text and "method: neurorit" in text


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    return tmp_path / "tb"


def _wandb_records(log_dir, run_id: str):
    """The protobuf records of an offline run's log (``run-<id>.wandb``, what ``wandb sync`` uploads): a 7-byte
    header, then LevelDB-style log blocks of 32 KiB, each chunk with a 7-byte header (crc, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(os.path.join(str(log_dir), "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb"))
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _finished_records(log_dir, run_id: str, wait: float = 60.0) -> list:
    """The run's records once its exit record is on disk: wandb's service process may still be writing the log
    when ``finish`` has returned in the training process."""
    deadline = time.monotonic() + wait
    while True:
        records = list(_wandb_records(log_dir, run_id))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _wandb_history(log_dir, run_id: str) -> tuple[list, dict]:
    """([(step, train/loss)], {config key: value}) as the offline run recorded them."""
    losses, config = [], {}
    for record in _finished_records(log_dir, run_id):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            if "train/loss" in items:
                losses.append((items["_step"], items["train/loss"]))
        elif kind in ("config", "run"):
            updates = record.config.update if kind == "config" else record.run.config.update
            config.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates})
    return losses, config


def test_wandb_offline_run(wandb_offline):
    stage = wandb_offline.parent  # wandb's files go beside tb/, in the stage's folder
    mon = _run(wandb_offline, "wandb")
    assert "wandb:" not in mon.stream.getvalue()  # WANDB_MODE asked for offline: nothing to say
    run_id = (stage / "wandb_run_id").read_text()
    losses, config = _wandb_history(stage, run_id)
    assert losses == [(1, 0.9), (2, 0.7), (3, 0.5)]
    assert config["stage1"] == CONFIG["stage1"] and config["runtime"] == CONFIG["runtime"]
    _run(wandb_offline, "wandb", start=3, steps=[0.3])  # a resumed stage continues the same run
    assert (stage / "wandb_run_id").read_text() == run_id
    _run(wandb_offline, "wandb", start=0, steps=[0.8])  # a stage started over opens a new one
    assert (stage / "wandb_run_id").read_text() != run_id
    assert not (wandb_offline / "wandb").exists()  # nothing of wandb inside tb/


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    return uri


def test_mlflow_file_store_run(tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    log_dir = tmp_path / "tb"
    _run(log_dir, "mlflow", project="exp-a", run_name="my-run")
    _run(log_dir, "mlflow", start=3, steps=[0.3], project="exp-a")  # resumed: the same run, params kept
    client = MlflowClient(mlflow_store)
    run = client.get_run((tmp_path / "mlflow_run_id").read_text())
    assert run.info.run_name == "my-run" and client.get_experiment(run.info.experiment_id).name == "exp-a"
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(history) == [(1, 0.9), (2, 0.7), (3, 0.5), (4, 0.3)]
    assert run.data.params["stage1.lr"] == "1e-05" and run.data.params["runtime.report_to"] == '["tensorboard"]'
    assert run.info.status == "FINISHED"


def test_several_trackers_from_a_comma_string(tmp_path, mlflow_store):
    _run(tmp_path / "tb", "tensorboard,mlflow")
    assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*")) and (tmp_path / "mlflow_run_id").is_file()
    assert os.listdir(tmp_path / "tb") == glob.glob("events.out.tfevents.*", root_dir=tmp_path / "tb")


def test_only_rank_0_logs(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.setattr(parallel, "is_main", lambda: False)
    mon = _run(tmp_path / "tb", "tensorboard,mlflow")
    assert os.listdir(tmp_path) == []  # no event file, no MLflow store
    assert mon.stream.getvalue() == ""


@pytest.mark.parametrize("value, needle", [("wandb", "not installed here: pip install wandb"),
                                           ("tensorboard,comet", "'comet' is not a tracker")])
def test_missing_or_unknown_tracker_is_one_line(tmp_path, monkeypatch, value, needle):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError) as err:
        Monitor(str(tmp_path), 10, 0, "stage1", Tracking(value), plain=True, stream=io.StringIO())
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not os.listdir(tmp_path)  # refused before anything was opened


def test_report_to_config_key():
    assert load_config(None, []).runtime.report_to == ["tensorboard"]
    assert load_config(None, ["--runtime.report_to", "tensorboard,wandb"]).runtime.report_to == ["tensorboard", "wandb"]
    assert Tracking().report_to == ("tensorboard",)


# ---------------------------------------------------------------------------------------- the plain line
def test_plain_line_when_stdout_is_not_a_terminal(tmp_path, monkeypatch):
    clock = iter([100.0, 160.0, 220.0])  # construction, then one call per logged step
    monkeypatch.setattr(monitor_mod.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    mon = Monitor(str(tmp_path), total_steps=10, start_step=4, desc="stage2", tracking=Tracking("none"), stream=out)
    assert mon.plain and mon.bar is None
    mon.scalars(5, {"train/loss": 0.25, "train/lr": 2e-5, "train/grad_norm": 0.5, "train/tokens_per_s": 1234.4})
    mon.scalars(0, {"train/trainable_params": 99})  # no line: not a training step's numbers
    mon.scalars(6, {"train/loss": 0.2, "train/lr": 2e-5, "train/grad_norm": None, "train/tokens_per_s": 1000.0})
    mon.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "stage2 step 5/10 | loss 0.2500 | lr 2.00e-05 | grad_norm 0.5 | tokens/s 1234 | elapsed 0:01:00 | eta 0:05:00",
        "stage2 step 6/10 | loss 0.2000 | lr 2.00e-05 | tokens/s 1000 | elapsed 0:02:00 | eta 0:04:00"]
    assert not os.listdir(tmp_path)  # report_to none: no tracker files


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_bar_not_lines(tmp_path):
    out = _Terminal()
    mon = Monitor(str(tmp_path), 10, 0, "stage1", Tracking("none"), stream=out)
    assert not mon.plain and mon.bar is not None
    mon.scalars(1, {"train/loss": 0.5})
    mon.close()
    assert out.getvalue() == ""
