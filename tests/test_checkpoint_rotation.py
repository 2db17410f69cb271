"""Checkpoint rotation (train/checkpoint.py, ``stage<N>.keep_last``): the newest N complete checkpoints stay, the
one a run resumed from is never deleted, interrupted saves older than the newest complete one go, and a
``keep_last`` below 1 is refused with one line. The saves are ``checkpoint.save`` itself, in a world of one, over
an engine that writes a file the way DeepSpeed's ``save_checkpoint`` does."""
from __future__ import annotations

import os

import pytest

from neurorit.config import load_config
from neurorit.errors import UserError
from train import checkpoint


class FileEngine:
    """Writes ``<tag>/state.pt`` (the client state's step) like ``TrainEngine.save`` writes its shards."""

    def save(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        os.makedirs(os.path.join(ckpt_dir, tag), exist_ok=True)
        with open(os.path.join(ckpt_dir, tag, "state.pt"), "w") as fh:
            fh.write(str(client_state["step"]))


def _save(ckpt_dir, step: int, **kw) -> None:
    progress = {"step": step, "consumed_samples": step * 4, "last_loss": 0.5}
    checkpoint.save(FileEngine(), str(ckpt_dir), progress, {"stage": "stage1"}, **kw)


def _steps(ckpt_dir) -> list[int]:
    return sorted(int(n[4:]) for n in os.listdir(ckpt_dir) if n.startswith("step"))


def test_keep_last_keeps_the_newest(tmp_path):
    for step in (2, 4, 6, 8):
        _save(tmp_path, step, keep_last=2)
    assert _steps(tmp_path) == [6, 8]
    assert checkpoint.find(str(tmp_path), "auto") == str(tmp_path / "step8")


def test_without_keep_last_nothing_is_deleted(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    assert _steps(tmp_path) == [1, 2, 3]


def test_the_checkpoint_resumed_from_is_never_deleted(tmp_path):
    for step in (2, 4):
        _save(tmp_path, step)
    resumed = checkpoint.find(str(tmp_path), str(tmp_path / "step2"))
    for step in (6, 8, 10):
        _save(tmp_path, step, keep_last=1, resumed_from=resumed)
    assert _steps(tmp_path) == [2, 10]


def test_interrupted_saves_older_than_the_newest_complete_go(tmp_path):
    for step in (2, 4):
        _save(tmp_path, step)
    os.remove(tmp_path / "step4" / checkpoint.MANIFEST)  # step 4's save was interrupted
    (tmp_path / "step9").mkdir()  # a newer interrupted folder (another run's, in flight): not ours to judge
    _save(tmp_path, 6, keep_last=2)
    assert _steps(tmp_path) == [2, 6, 9]


@pytest.mark.parametrize("value", [0, -3])
def test_keep_last_below_one_is_refused(tmp_path, value):
    with pytest.raises(UserError) as err:
        _save(tmp_path, 2, keep_last=value)
    assert "keep_last" in str(err.value) and "\n" not in str(err.value)
    assert not os.listdir(tmp_path)  # refused before anything was written
    with pytest.raises(UserError, match="'stage2.keep_last' must be >= 1"):
        load_config(None, ["--stage2.keep_last", str(value)])  # refused when the config is read


def test_keep_last_config_key():
    cfg = load_config(None, ["--stage1.keep_last", "3"])
    assert cfg.stage1.keep_last == 3 and cfg.stage2.keep_last is None
