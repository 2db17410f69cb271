"""A stage-1 checkpoint taken on 1 rank resumes on 2, and one taken on 2 resumes on 1 (DeepSpeed's universal
checkpoint, train/checkpoint.py), with real ranks (ZeRO-3, CPU/gloo): the losses after each resume are those of the
uninterrupted run, and so is the export."""
import glob
import shutil

import pytest
from safetensors.torch import load_file

from neurorit.run_layout import StageFiles
from tests.support.workspaces import scalars, training_workspace

SCRIPT = "train/stage1.py"
TOLERANCE = 1e-5  # relative, on each step's loss (measured: equal to the last digit)


def _losses(out) -> list:
    return scalars(StageFiles(str(out / "stage1")).tensorboard)["train/loss"]


def _export(out) -> dict:
    (path,) = glob.glob(str(out / "stage1" / "export" / "*.safetensors"))
    return load_file(path)


@pytest.mark.slow  # a kill / resume / clean-exit check of real ranks: make test-faults (in .ci/run)
@pytest.mark.distributed
def test_resume_on_another_world_size(tmp_path, run_ranks):
    config = training_workspace(str(tmp_path), n_train=24, stage_overrides={"max_steps": 6, "save_every": 2})
    out = tmp_path / "out"
    run_ranks(SCRIPT, "--config", config, n=1, launcher="torchrun")  # the uninterrupted run, on 1 rank
    reference, ref_export = _losses(out), _export(out)
    shutil.rmtree(out / "stage1")
    run_ranks(SCRIPT, "--config", config, "--stop_after", "2", n=1, launcher="torchrun")  # steps 1-2 on 1 rank
    printed = run_ranks(SCRIPT, "--config", config, "--stop_after", "2", n=2, launcher="torchrun")  # 3-4 on 2
    assert "taken on 1 ranks; resumed on 2" in printed.stderr
    printed = run_ranks(SCRIPT, "--config", config, n=1, launcher="torchrun")  # 5-6 on 1 rank
    assert "taken on 2 ranks; resumed on 1" in printed.stderr
    got = _losses(out)
    assert [s for s, _ in got] == [s for s, _ in reference] == list(range(1, 7))
    for (step, a), (_, b) in zip(got, reference):
        assert abs(a - b) <= TOLERANCE * abs(b), (step, a, b)
    export = _export(out)
    assert max(float((export[k] - ref_export[k]).abs().max()) for k in export) <= 1e-6
    assert (out / "stage1" / "checkpoints" / "step2" / "universal").is_dir()
