"""scripts/analyze_run.py: neuron locations, paired differences, answer shapes and map overlap, on hand-made files
whose right answers are known."""
import json
import os

import pytest

from neurorit.run_layout import StageFiles
from rag import analysis as analyze_run
from tests.support.workspaces import hand_neuron_map as neuron_map
from tests.support.workspaces import write_predictions as predictions


def write_summary_and_losses(folder, losses):
    from torch.utils.tensorboard import SummaryWriter

    os.makedirs(folder)
    files = StageFiles(folder)
    with open(files.summary, "w") as fh:
        json.dump({"trainable_params": 123}, fh)
    writer = SummaryWriter(files.tensorboard)
    for step, loss in enumerate(losses, 1):
        writer.add_scalar("train/loss", loss, step)
    writer.close()


def test_analysis_of_a_run(tmp_path):
    run = str(tmp_path / "run")
    neuron_map([(1, 2), (1, 4), (2, 0)]).save(os.path.join(run, "mining"))
    other = neuron_map([(1, 2), (0, 7)], targets=(2,))
    other.save(str(tmp_path / "other"))
    n = 40
    ev = os.path.join(run, "eval")
    # neurorit beats base on top5 on every question; ties it on gold; loses half of noise_only to abstentions
    predictions(os.path.join(ev, "neurorit.predictions.jsonl"),
                {"gold": [1.0] * n, "top5": [1.0] * n, "noise_only": [0.0] * (n // 2) + [1.0] * (n // 2)},
                {"gold": ["right"] * n, "top5": ["right"] * n, "noise_only": [""] * (n // 2) + ["right"] * (n // 2)})
    predictions(os.path.join(ev, "base.predictions.jsonl"),
                {"gold": [1.0] * n, "top5": [0.0] * n, "noise_only": [1.0] * n})
    stage = os.path.join(run, "neurorit", "stage1")
    write_summary_and_losses(stage, [10.0, 9.5, 9.0])
    res = analyze_run.main(["--run", run, "--compare-map", str(tmp_path / "other")])
    assert res["training"] == {os.path.join("neurorit", "stage1"): {"trainable_params": 123, "steps": 3,
                                                                     "first_loss": 10.0, "last_loss": 9.0}}

    assert res["neurons"]["per_layer"]["irrelevant_only"] == [0, 2, 1]
    assert res["neurons"]["target_layers"] == [1]
    paired = res["paired"]["base"]
    assert paired["top5"]["diff"] == 1.0 and paired["top5"]["verdict"] == "above"
    assert paired["gold"]["diff"] == 0.0 and paired["gold"]["verdict"] == "inside"
    assert paired["noise_only"]["diff"] == -0.5 and paired["noise_only"]["verdict"] == "below"
    assert paired["noise_only"]["ci95"][1] < 0 and paired["noise_only"]["n"] == n
    shapes = res["answers"]["neurorit"]
    assert shapes["noise_only"]["empty"] == 0.5 and shapes["gold"]["empty"] == 0.0
    assert shapes["noise_only"]["match"] == 0.5 and res["answers"]["base"]["top5"]["match"] == 0.0
    assert shapes["top5"]["differs_from_base"] == 1.0 and shapes["gold"]["differs_from_base"] == 0.0
    overlap = res["map_overlap"]["groups"]
    assert overlap["irrelevant_only"] == {"size_a": 3, "size_b": 2, "both": 1, "jaccard": 0.25}
    assert overlap["shared"]["jaccard"] == 1.0
    assert res["map_overlap"]["target_layers_b"] == [2]
    with open(os.path.join(run, "analysis.json")) as fh:
        assert json.load(fh)["paired"]["base"]["top5"]["verdict"] == "above"
    md = open(os.path.join(run, "analysis.md")).read()
    assert "| irrelevant_only | 0 | 2 | 1 |" in md and "+100.0" in md and "50.0 / 50 / " in md
    assert "| neurorit/stage1 | 123 | 10.000 | 9.000 |" in md


def test_paired_differences_per_question_kind(tmp_path):
    run = str(tmp_path / "run")
    neuron_map([(1, 2)]).save(os.path.join(run, "mining"))
    kinds = ["known", "fresh"] * 20
    # on known facts neurorit is right where base is wrong; on fresh facts both are wrong
    predictions(os.path.join(run, "eval", "neurorit.predictions.jsonl"),
                {"noise_only": [1.0 if k == "known" else 0.0 for k in kinds]}, kinds=kinds)
    predictions(os.path.join(run, "eval", "base.predictions.jsonl"), {"noise_only": [0.0] * 40}, kinds=kinds)
    res = analyze_run.main(["--run", run])
    by_kind = res["paired_by_kind"]
    assert list(by_kind) == ["known", "fresh"]
    assert by_kind["known"]["base"]["noise_only"] == {"diff": 1.0, "ci95": [1.0, 1.0], "n": 20, "verdict": "above"}
    assert by_kind["fresh"]["base"]["noise_only"]["diff"] == 0.0 and by_kind["fresh"]["base"]["noise_only"]["n"] == 20
    assert res["paired"]["base"]["noise_only"]["diff"] == 0.5
    md = open(os.path.join(run, "analysis.md")).read()
    assert "### known-fact questions" in md and "+100.0 [+100.0, +100.0] above (n=20)" in md


def test_evaluations_from_several_folders(tmp_path):
    run = str(tmp_path / "run")
    neuron_map([(1, 2)]).save(os.path.join(run, "mining"))
    predictions(os.path.join(run, "eval", "base.predictions.jsonl"), {"gold": [1.0, 0.0]})
    predictions(str(tmp_path / "variants" / "neurorit.predictions.jsonl"), {"gold": [1.0, 1.0]})
    res = analyze_run.main(["--run", run, "--eval-dir", os.path.join(run, "eval"),
                            "--eval-dir", str(tmp_path / "variants")])
    assert res["paired"]["base"]["gold"]["diff"] == 0.5
    predictions(str(tmp_path / "variants" / "base.predictions.jsonl"), {"gold": [1.0, 0.0]})
    with pytest.raises(SystemExit):
        analyze_run.main(["--run", run, "--eval-dir", os.path.join(run, "eval"), "--eval-dir", str(tmp_path / "variants")])


def test_a_method_without_predictions_is_a_clear_error(tmp_path, capsys):
    run = str(tmp_path / "run")
    neuron_map([(1, 2)]).save(os.path.join(run, "mining"))
    predictions(os.path.join(run, "eval", "base.predictions.jsonl"), {"gold": [1.0, 0.0]})
    with pytest.raises(SystemExit) as err:
        analyze_run.main(["--run", run])
    assert err.value.code == 2
    assert "no predictions of method 'neurorit'" in capsys.readouterr().err
