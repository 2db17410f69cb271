"""The run layout (neurorit/run_layout.py): the paths of a run from its config, the trainable count of a model
followed through the stages behind it (what evaluation records when --trainable-params is not given), and the
CLI the SLURM scripts call."""
import json
import os
import subprocess
import sys

from neurorit.config import load_config
from neurorit.run_layout import RunLayout, eval_files, trained_params
from rag import evaluate
from tests.support.workspaces import eval_checkpoint, eval_config, eval_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_stage(folder: str, count: int, init_from: str) -> str:
    """A finished stage's folder: its export (empty here) and train_summary.json; returns the export."""
    export = os.path.join(folder, "export")
    os.makedirs(export, exist_ok=True)
    with open(os.path.join(folder, "train_summary.json"), "w") as fh:
        json.dump({"trainable_params": count, "init_from": init_from, "export_dir": export}, fh)
    return export


def test_paths_follow_the_config_and_its_overrides(tmp_path):
    cfg = load_config(None, ["--runtime.output_dir", str(tmp_path)])
    layout = RunLayout.of(cfg)
    assert layout.mining.summary == str(tmp_path / "mining" / "summary.txt")
    assert layout.stage("stage1").export == str(tmp_path / "stage1" / "export")
    assert layout.done_marker("mining") == layout.mining.summary
    assert layout.done_marker("stage2") == layout.stage("stage2").summary
    assert layout.done_marker("eval:base") == eval_files(layout.evaluation(), "base").result
    assert layout.stage("stage2", "lora").summary == str(tmp_path / "lora" / "stage2" / "train_summary.json")
    assert layout.evaluation() == str(tmp_path / "eval")
    assert eval_files(layout.evaluation(), "x").result == str(tmp_path / "eval" / "x.eval.json")
    moved = RunLayout.of(load_config(None, ["--runtime.output_dir", str(tmp_path), "--stage1.output_dir", "/s1",
                                            "--mining.output_dir", "/m", "--eval.output_dir", "/e"]))
    assert (moved.stage("stage1").root, moved.mining.root, moved.evaluation()) == ("/s1", "/m", "/e")
    assert moved.stage("stage2").root == str(tmp_path / "stage2")


def test_trained_params_add_up_the_stages_behind_an_export(tmp_path):
    base = str(tmp_path / "base")
    stage1 = write_stage(str(tmp_path / "neurorit" / "stage1"), 100, base)
    stage2 = write_stage(str(tmp_path / "neurorit" / "stage2"), 2000, stage1)
    alone = write_stage(str(tmp_path / "layer_tuning" / "stage2"), 700, base)
    assert (trained_params(stage2), trained_params(stage1), trained_params(alone), trained_params(base)) == \
        (2100, 100, 700, 0)
    loop = write_stage(str(tmp_path / "odd" / "stage1"), 5, str(tmp_path / "odd" / "stage1" / "export"))
    assert trained_params(loop) == 5  # a summary naming itself does not loop


def test_evaluation_reads_the_count_from_the_checkpoint(tmp_path):
    export = os.path.join(str(tmp_path), "run", "neurorit", "stage2", "export")
    eval_checkpoint(export)
    first = write_stage(str(tmp_path / "run" / "neurorit" / "stage1"), 11, "base")
    write_stage(os.path.dirname(export), 31, first)
    config = eval_config(str(tmp_path), eval_records(str(tmp_path / "test.jsonl"), n_questions=20), export)
    result = evaluate.main(["--config", config, "--name", "neurorit", "--no-progress",
                            "--eval.settings", "gold", "--eval.max_new_tokens", "2"])
    assert result["trainable_params"] == 42


def test_cli_prints_the_paths_shell_scripts_need(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "neurorit.run_layout", *args, "--runtime.output_dir",
                                str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    assert cli("export", "stage2") == str(tmp_path / "stage2" / "export")
    assert cli("mining") == str(tmp_path / "mining")
    first = write_stage(str(tmp_path / "stage1"), 3, "base")
    write_stage(str(tmp_path / "stage2"), 4, first)
    assert cli("trained-params", str(tmp_path / "stage2" / "export")) == "7"


def test_an_export_copied_away_from_its_run_keeps_its_count_in_its_model_card(tmp_path):
    from model_patches.model_card import write_model_card

    copied = tmp_path / "shared" / "my-export"
    copied.mkdir(parents=True)
    write_model_card(str(copied), base_model="base", method="neurorit", stage="stage2", trainable_params=2100)
    assert evaluate.trainable_count(str(copied)) == 2100  # no train_summary.json beside it
    export = write_stage(str(tmp_path / "run" / "stage2"), 7, "base")
    assert evaluate.trainable_count(export) == 7 and evaluate.trainable_count(str(tmp_path / "base")) == 0
