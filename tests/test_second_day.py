"""A researcher's second day (issue 29): trackers checked before any model loads (one line saying what to set, or
a local mode the log line names, never inside ``tb/``); paths of a config independent of the working directory."""
from __future__ import annotations

import io
import os

import pytest

from neurorit.config import load_config
from neurorit.errors import UserError
from train.monitor import Monitor, Tracking


@pytest.fixture
def bare_env(tmp_path, monkeypatch):
    """No tracker settings at all: no WANDB_MODE, no key, an empty netrc, no MLflow URI; wandb's own folders in
    tmp_path, the working directory too (a tracker must not fall back to files in the caller's directory)."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.chdir(tmp_path)
    stage = tmp_path / "stage1"
    stage.mkdir()
    return stage


def _monitor(stage, report_to: str) -> Monitor:
    mon = Monitor(str(stage / "tb"), 3, 0, "stage1", Tracking(report_to, {"stage1": {"lr": 1e-5}}), plain=True,
                  stream=io.StringIO())
    mon.scalars(1, {"train/loss": 0.5})
    mon.close()
    return mon


def test_wandb_without_settings_runs_offline_and_says_where(bare_env):
    mon = _monitor(bare_env, "wandb")
    note = mon.stream.getvalue().splitlines()[0]
    folder = str(bare_env / "wandb")
    assert note.startswith("wandb: no WANDB_API_KEY and no WANDB_MODE set: recording offline in " + folder)
    assert f"wandb sync {folder}" in note
    runs = [d for d in os.listdir(folder) if d.startswith("offline-run-")]
    assert len(runs) == 1 and runs[0].endswith((bare_env / "wandb_run_id").read_text())
    assert not (bare_env / "tb").exists()  # nothing of wandb's inside tb/


def test_mlflow_without_uri_records_to_a_local_store_it_names(bare_env):
    from mlflow.tracking import MlflowClient

    mon = _monitor(bare_env, "tensorboard,mlflow")
    store = str(bare_env / "mlruns")
    assert mon.stream.getvalue().splitlines()[0].startswith(
        f"mlflow: MLFLOW_TRACKING_URI is not set: recording to the local file store {store} ")
    run = MlflowClient("file:" + store).get_run((bare_env / "mlflow_run_id").read_text())
    assert run.data.params["stage1.lr"] == "1e-05" and run.info.status == "FINISHED"
    assert [f for f in os.listdir(bare_env / "tb") if not f.startswith("events.out.tfevents")] == []
    assert not (bare_env.parent / "mlflow.db").exists()  # not MLflow's default store in the working directory


@pytest.mark.parametrize("env, needle", [
    ({"WANDB_MODE": "online"}, "set WANDB_API_KEY (or run `wandb login`), or set WANDB_MODE=offline"),
    ({"WANDB_MODE": "onlin"}, "WANDB_MODE='onlin' is not a wandb mode"),
    ({"MLFLOW_TRACKING_URI": "file:/tmp/x/mlruns"}, "MLFLOW_ALLOW_FILE_STORE=true"),
    ({"MLFLOW_TRACKING_URI": "/tmp/x/mlruns"}, "MLFLOW_ALLOW_FILE_STORE=true")])
def test_a_tracker_it_would_fail_on_is_refused_at_config_time(bare_env, monkeypatch, env, needle):
    """Config validation (every entry point's first step, before any model loads) refuses it in one line."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    tracker = "wandb" if "WANDB_MODE" in env else "mlflow"
    with pytest.raises(UserError) as err:
        load_config(None, ["--runtime.report_to", f"tensorboard,{tracker}"])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_settings_that_work_pass_the_check(bare_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert load_config(None, ["--runtime.report_to", "wandb,mlflow"]).runtime.report_to == ["wandb", "mlflow"]
