"""The analysis's recomputable claims (rag/primary.py, rag/trainable_breakdown.py, rag/analysis.py): Holm's
correction on a hand-worked family, the exact sign-flip p-value, the pre-registered family of a run with one clear
difference, one null and one missing arm, identical-answer shares, the trainable-parameter breakdown against what
training counts, and the per-question answers' gzip round trip through ``collect``."""
import gzip
import json
import os

import pytest

from neurorit import methods
from neurorit.config import load_config
from neurorit.errors import UserError
from neurorit.run_layout import RunLayout, StageFiles, collect, committed_files, eval_files
from rag import analysis
from rag.primary import holm, sign_flip_p
from rag.trainable_breakdown import UNMAPPED, stage_breakdown
from tests.support.models import tiny_model
from tests.support.workspaces import (GROUPS, TARGET_LAYERS, hand_neuron_map, setup_trainable, training_neuron_map,
                                      write_predictions, write_yaml)

HAND_P = [0.01, 0.04, 0.03, 0.005]
# sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
HAND_HOLM = [0.03, 0.06, 0.06, 0.02]


def test_holm_on_a_hand_worked_family():
    assert holm(HAND_P) == pytest.approx(HAND_HOLM)
    assert [p <= 0.05 for p in holm(HAND_P)] == [True, False, False, True]
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1 (0.5 x 2), then the running max


def test_holm_agrees_with_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    reject, adjusted, _, _ = multitest.multipletests(HAND_P, alpha=0.05, method="holm")
    assert holm(HAND_P) == pytest.approx(list(adjusted))


def test_sign_flip_p_is_exact():
    assert sign_flip_p([1.0] * 40) == 2 / 2 ** 40  # only all-plus and all-minus are as extreme
    # 3 of 4 discordant pairs positive: counts 0, 1, 3, 4 of Binomial(4, 1/2) are as far from 2 -> 10/16
    assert sign_flip_p([1, 1, 0, 1, -1, 0]) == 10 / 16
    assert sign_flip_p([0, 0]) == 1.0 and sign_flip_p([]) == 1.0
    with pytest.raises(UserError):
        sign_flip_p([0.5])


def primary_run(tmp_path) -> str:
    """A run whose known-fact questions show neurons_only 40/40 vs random_neurons_only 0/40 on noise_only (the same
    on top5), neurorit and random_neurons each right on a different half (a null), and no random_layers; the
    fresh questions disagree the other way and must not count."""
    run = str(tmp_path / "run")
    hand_neuron_map([(1, 2)]).save(RunLayout(run).mining.root)
    kinds = ["known"] * 40 + ["fresh"] * 10
    ev = RunLayout(run).evaluation()
    arms = {"neurons_only": [1.0] * 40 + [0.0] * 10, "random_neurons_only": [0.0] * 40 + [1.0] * 10,
            "neurorit": [1.0, 0.0] * 25, "random_neurons": [0.0, 1.0] * 25, "layer_tuning": [1.0] * 50}
    for name, noise in arms.items():
        top5 = [1.0] * 50 if name.endswith("neurons_only") else noise
        write_predictions(eval_files(ev, name).predictions, {"noise_only": noise, "top5": top5}, kinds=kinds)
    return run


def test_the_primary_family_of_a_run(tmp_path):
    run = primary_run(tmp_path)
    res = analysis.main(["--run", run])
    family = res["primary"]
    assert (family["size"], family["alpha"]) == (6, 0.05)
    cells = {(c["a"], c["setting"]): c for c in family["comparisons"]}
    clear = cells[("neurons_only", "noise_only")]
    assert (clear["n"], clear["diff"], clear["p"]) == (40, 1.0, 2 / 2 ** 40)
    assert clear["p_holm"] == 6 * 2 / 2 ** 40 and clear["verdict"] == "A better" and clear["ci95"] == [1.0, 1.0]
    tie = cells[("neurons_only", "top5")]
    assert (tie["diff"], tie["p"], tie["p_holm"], tie["verdict"]) == (0.0, 1.0, 1.0, "no difference")
    null = cells[("neurorit", "noise_only")]
    assert null["n"] == 40 and null["diff"] == 0.0 and null["p"] == 1.0 and null["verdict"] == "no difference"
    missing = cells[("layer_tuning", "noise_only")]
    assert missing["verdict"] == "missing" and missing["p"] is None and "random_layers" in missing["missing"]
    assert "primary" not in res["exploratory"] and {"paired", "answers", "parameters"} <= set(res["exploratory"])
    md = open(analysis.analysis_files(run)["md"]).read()
    assert md.index("## Primary comparisons (fixed in") < md.index("# Exploratory")
    assert "| neurons_only vs random_neurons_only | known/noise_only | 40 | +100.0 [+100.0, +100.0] |" in md
    assert "neurons_only better" in md and "missing: no predictions of random_layers" in md


def test_the_family_is_the_configs(tmp_path):
    run = primary_run(tmp_path)
    config = write_yaml(str(tmp_path / "x.yaml"), {"analysis": {"primary": ["neurorit:layer_tuning"],
                                                                "primary_cells": ["fresh/top5", "all/top5"],
                                                                "alpha": 0.01}})
    family = analysis.main(["--run", run, "--config", config])["primary"]
    assert family["fixed_in"] == config and family["size"] == 2 and family["alpha"] == 0.01
    fresh, every = family["comparisons"]
    assert (fresh["kind"], fresh["setting"], fresh["n"], fresh["diff"]) == ("fresh", "top5", 10, -0.5)
    assert (every["kind"], every["n"], every["diff"]) == ("all", 50, -0.5)
    assert fresh["p"] == sign_flip_p([-1.0, 0.0] * 5) and every["p"] == sign_flip_p([-1.0, 0.0] * 25)
    assert every["p_holm"] == 2 * every["p"] and fresh["p_holm"] == fresh["p"]  # step-down: the larger p x 1
    assert (every["verdict"], fresh["verdict"]) == ("B better", "no difference")


def test_the_config_refuses_an_unknown_primary_arm_or_cell():
    assert load_config(None).analysis.primary == ["neurons_only:random_neurons_only", "layer_tuning:random_layers",
                                                  "neurorit:random_neurons"]
    assert all(methods.get(b).control_of == a for a, b in (p.split(":") for p in load_config(None).analysis.primary))
    for key, value in (("primary", "neurorit:nobody"), ("primary", "neurorit"), ("primary_cells", "known/nowhere"),
                       ("primary_cells", "top5"), ("alpha", "0")):
        with pytest.raises(UserError, match=f"analysis.{key}"):
            load_config(None, [f"--analysis.{key}", value])


def test_identical_answer_shares(tmp_path):
    run = str(tmp_path / "run")
    hand_neuron_map([(1, 2)]).save(RunLayout(run).mining.root)
    ev = RunLayout(run).evaluation()
    matches = {"top5": [1.0] * 4, "gold": [1.0] * 2}
    for name, top5 in (("neurorit", ["a", "b", "c", "d"]), ("random_neurons", ["a", "b", "x", "y"]),
                       ("layer_tuning", ["a", "b", "c", "D"])):
        write_predictions(eval_files(ev, name).predictions, matches, {"top5": top5, "gold": ["g", top5[3]]})
    shares = analysis.main(["--run", run])["identical_answers"]
    assert shares["neurorit:random_neurons"]["top5"] == {"share": 0.5, "n": 4}
    assert shares["neurorit:layer_tuning"]["top5"] == {"share": 0.75, "n": 4}  # "D" is not "d"
    assert shares["neurorit:layer_tuning"]["gold"] == {"share": 0.5, "n": 2}
    assert "neurons_only:random_neurons_only" not in shares  # a primary pair never evaluated


def write_stage(folder: str, summary: dict) -> StageFiles:
    """A finished stage folder holding only ``train_summary.json``."""
    files = StageFiles(folder)
    os.makedirs(files.root)
    with open(files.summary, "w") as fh:
        json.dump(summary, fh)
    return files


@pytest.mark.parametrize("method,stage,train_gate", [("neurorit", "stage2", True), ("neurorit", "stage2", False),
                                                      ("random_neurons", "stage2", True), ("neurorit", "stage1", True),
                                                      ("random_layers", "stage2", True), ("lora", "stage2", True)])
def test_the_parameter_breakdown_adds_up_to_what_training_counts(tmp_path, method, stage, train_gate):
    model = tiny_model("llama", layers=2)
    nmap = training_neuron_map(model)
    trainable, _ = setup_trainable(model, method, stage, nmap, train_gate)
    files = write_stage(str(tmp_path / method / stage), {"method": method, "stage": stage,
                                                         "trainable_params": trainable.count,
                                                         "trainable": trainable.breakdown()})
    got = stage_breakdown(files, nmap)
    assert got["recorded"] == trainable.count == sum(got["groups"].values())
    assert got["groups"]["other"] == (trainable.count if method == "lora" else 0)
    assert got["ffn_layers"] == trainable.full_layers
    per_neuron = (3 if train_gate else 2) * model.config.hidden_size
    assert all(v["neuron_params"] == per_neuron * v["neurons"] for v in got["per_layer"].values())
    assert {int(k): v["neurons"] for k, v in got["per_layer"].items() if v["neurons"]} == \
        {layer: int(ids.numel()) for layer, ids in trainable.neurons.items()}
    if method == "neurorit" and stage == "stage2":  # every mined neuron outside the target layer, by its group
        outside = {g: sum(1 for layer, _ in rows if layer not in TARGET_LAYERS) for g, rows in GROUPS.items()}
        assert {g: got["groups"][g] // per_neuron for g in GROUPS} == outside and got["groups"][UNMAPPED] == 0


def test_the_parameter_breakdown_per_group_by_hand(tmp_path):
    nmap = hand_neuron_map([(1, 2), (1, 4), (2, 0)], targets=(1,))
    # a random arm's draw: (0, 1) is the map's relevant neuron, (2, 0) its irrelevant one, (0, 6) and (2, 7) no one's
    split = {"delta_params": 4 * 12, "ffn_params": 96, "other_params": 0, "neurons": {"0": [1, 6], "2": [0, 7]},
             "ffn_layers": [1]}
    got = stage_breakdown(write_stage(str(tmp_path / "s"), {"trainable_params": 144, "trainable": split}), nmap)
    assert got["groups"] == {"relevant_only": 12, "irrelevant_only": 12, "shared": 0, UNMAPPED: 24,
                             "ffn_layers": 96, "other": 0}
    assert got["per_layer"] == {"0": {"neurons": 2, "neuron_params": 24, "ffn_params": 0},
                                "1": {"neurons": 0, "neuron_params": 0, "ffn_params": 96},
                                "2": {"neurons": 2, "neuron_params": 24, "ffn_params": 0}}
    old = stage_breakdown(write_stage(str(tmp_path / "old"), {"trainable_params": 144}), nmap)
    assert old["groups"] == {"other": 144} and old["recorded_split"] is False


def test_per_question_answers_round_trip_through_collect(tmp_path):
    layout = RunLayout(str(tmp_path / "run"))
    for folder, name in ((layout.evaluation(), "neurorit"), (layout.variants_evaluation, "neurorit_frozen_gates"),
                         (layout.instruction_evaluation("two_step", False), "base")):
        files = eval_files(folder, name)
        write_predictions(files.predictions, {"top5": [1.0, 0.0]}, {"top5": ["Paris", ""]}, kinds=["known", "fresh"])
        with open(files.result, "w") as fh:
            json.dump({}, fh)
    write_predictions(eval_files(layout.evaluation(), "unfinished").predictions, {"top5": [1.0]})  # no eval.json
    committed = committed_files(layout)
    assert "predictions/neurorit.predictions.jsonl.gz" in committed
    assert "predictions/variants/neurorit_frozen_gates.predictions.jsonl.gz" in committed
    assert "predictions/eval_two_step/base.predictions.jsonl.gz" in committed
    assert not any("unfinished" in dest for dest in committed)
    for into in ("a", "b"):
        collect(layout, str(tmp_path / into))
    dest = "predictions/neurorit.predictions.jsonl.gz"
    packed = (tmp_path / "a" / dest).read_bytes()
    assert packed == (tmp_path / "b" / dest).read_bytes()  # no time stamp: the same answers, the same bytes
    assert gzip.decompress(packed) == open(committed[dest], "rb").read()
    from_results = analysis.load_predictions([str(tmp_path / "a" / "predictions")])
    finished = analysis.load_predictions([layout.evaluation()])
    assert from_results == {k: v for k, v in finished.items() if k != "unfinished"}
    assert from_results["neurorit"][("top5", "q1")]["answer"] == ""


def test_collect_commits_the_map_and_every_stage_summary(tmp_path):
    """The parameter breakdown and the neuron tables need the map's JSON and the stages' summaries: both travel."""
    layout = RunLayout(str(tmp_path / "run"))
    os.makedirs(layout.mining.root)
    (tmp_path / "run" / "mining" / "neuron_map.json").write_text("{}")
    for stage in (layout.stage("stage1", "neurorit"), StageFiles(layout.selection("neurorit", "lr0.001", "stage2"))):
        os.makedirs(stage.root)
        with open(stage.summary, "w") as fh:
            json.dump({"trainable_params": 3}, fh)
    committed = committed_files(layout)
    assert committed["neuron_map.json"] == os.path.join(layout.mining.root, "neuron_map.json")
    assert {d for d in committed if d.startswith("stages/")} == {
        "stages/neurorit/stage1/train_summary.json", "stages/selection/neurorit/lr0.001/stage2/train_summary.json"}
