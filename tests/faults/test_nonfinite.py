"""The non-finite guard (train/loop.py ``check_finite``): a nan / inf loss or a nan gradient norm at step k stops
training with one line naming step k, before anything of step k is saved; the last good checkpoint (step k-1)
stays the one ``--resume auto`` takes, and resuming from it (without the fault) ends with the same export as a
run that never saw the fault. On 1 rank (in this process) and on 2 real ranks (torchrun, ZeRO-3)."""
from __future__ import annotations

import os

import pytest

from neurorit.config import load_config
from neurorit.errors import UserError
from tests.faults import dist_stage, harness
from train import checkpoint

STEPS, BAD = 5, 3


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nonfinite"))
    return harness.training_workspace(root, n_train=20, max_steps=STEPS, save_every=1)


def assert_stopped_at_bad_step(out: str) -> None:
    ckpts = os.path.join(out, "checkpoints")
    assert not os.path.exists(os.path.join(ckpts, f"step{BAD}")), "the bad step was saved"
    assert checkpoint.find(ckpts, "auto") == os.path.join(ckpts, f"step{BAD - 1}")
    assert not os.path.exists(os.path.join(out, "export"))
    assert not os.path.exists(os.path.join(out, "train_summary.json"))


@pytest.fixture(scope="module")
def straight_one_rank(config, tmp_path_factory):
    """An uninterrupted, fault-free 1-rank run: the export every resumed 1-rank run must equal."""
    out = str(tmp_path_factory.mktemp("straight") / "stage1")
    mp = pytest.MonkeyPatch()
    from tests.support.ranks import single_rank_env

    single_rank_env(mp)
    try:
        from train.loop import run_stage

        run_stage("stage1", load_config(config, ["--stage1.output_dir", out]))
    finally:
        mp.undo()
    return os.path.join(out, "export")


@pytest.mark.parametrize("what", ["loss", "inf", "grad"])
def test_one_rank_nonfinite_stops_naming_the_step(what, config, straight_one_rank, tmp_path, monkeypatch,
                                                  single_rank_env):
    from train import loop

    out = str(tmp_path / "stage1")
    cfg = load_config(config, ["--stage1.output_dir", out])
    with monkeypatch.context() as patch:
        patch.setattr(loop, "_train_step", loop._train_step)
        patch.setattr(loop, "label_loss", loop.label_loss)
        dist_stage.install_nan(f"{BAD}:{what}")
        with pytest.raises(UserError) as err:
            loop.run_stage("stage1", cfg)
    message = str(err.value)
    assert message.startswith(f"step {BAD}: non-finite ") and "\n" not in message, message
    assert ("grad_norm" in message) if what == "grad" else ("loss (" in message), message
    assert_stopped_at_bad_step(out)

    resumed = loop.run_stage("stage1", cfg)  # the fault is gone: --resume auto from step BAD-1
    assert resumed["finished"] and resumed["step"] == STEPS
    harness.assert_same_files(straight_one_rank, os.path.join(out, "export"))


@pytest.mark.distributed
@pytest.mark.parametrize("what,only", [("loss", None), ("grad", 1)])
def test_two_ranks_nonfinite_stops_naming_the_step(what, only, config, tmp_path):
    """nan loss on both ranks; a nan gradient on rank 1 only (the reduced grad norm is nan on every rank): both
    ranks stop with the same line, exit 2, the last good checkpoint is what --resume auto takes; the re-run
    without the fault finishes and equals an uninterrupted 2-rank run."""
    out = str(tmp_path / "stage1")
    args = ["--config", config, "--stage1.output_dir", out]
    spec = f"{BAD}:{what}" + (f":{only}" if only is not None else "")
    log = str(tmp_path / "nan.log")
    proc = harness.launch("tests/faults/dist_stage.py", "stage1", *args, log=log, env={"NEURORIT_FAULT_NAN": spec})
    result = harness.kill_rank_when(proc, log, lambda: False, 0, 0.0, "no kill")
    assert result.returncode != 0
    errors = harness.error_lines(result.output)
    assert len(errors) == 2 and errors[0] == errors[1], result.output[-3000:]
    assert errors[0].startswith(f"error: step {BAD}: non-finite "), errors[0]
    assert_stopped_at_bad_step(out)

    rerun = harness.run("tests/faults/dist_stage.py", "stage1", *args, log=str(tmp_path / "rerun.log"))
    assert f"step{BAD - 1} at step {BAD - 1}" in rerun
    straight = str(tmp_path / "straight")
    harness.run("tests/faults/dist_stage.py", "stage1", "--config", config, "--stage1.output_dir", straight,
                log=str(tmp_path / "straight.log"))
    harness.assert_same_files(os.path.join(straight, "export"), os.path.join(out, "export"))
