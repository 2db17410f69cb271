"""The dev selection's rules (rag/selection.py): the stage-1 grid's order and rule, the choice when no point passes,
the learning-rate criterion and its tie; the report's copy of the record (results.json and results.md); and the
config's checks of ``selection.*``."""
from __future__ import annotations

import json

import pytest

from neurorit.config import SelectionConfig, load_config
from neurorit.errors import UserError
from rag import report, selection

SEL = SelectionConfig(lrs=[1e-4, 1e-5], stage1_steps=[60, 20], stage1_lrs=[1e-2, 1e-3], stage1_noise_end=0.5,
                      stage1_gold_drop=0.02)


def _probe(noise: float, gold: float = 0.0) -> dict:
    return {"noise_only": {"end_share": noise}, "gold": {"end_share": gold}}


def _summary(**match) -> dict:
    return {"settings": {s: {"match": v} for s, v in match.items()}}


def test_stage1_grid_is_tried_cheapest_first():
    assert selection.stage1_grid(SEL) == [(20, 1e-3), (20, 1e-2), (60, 1e-3), (60, 1e-2)]
    assert selection.stage1_grid(SelectionConfig()) == []


@pytest.mark.parametrize("noise, gold, passes", [
    (0.5, 0.78, True),     # exactly the share, exactly 2 points below base (0.80)
    (0.49, 0.80, False),   # too few noise-only prompts end at once
    (0.9, 0.77, False),    # gold-only Match fell 3 points
])
def test_stage1_rule(noise, gold, passes):
    trial = selection.stage1_trial(20, 1e-3, _probe(noise), gold, 0.80, SEL)
    assert trial["passes"] is passes
    assert trial["noise_end_share"] == noise and trial["gold_match"] == gold and trial["base_gold_match"] == 0.80


def test_pick_stage1_first_passing_else_best_within_gold_bound():
    t = [selection.stage1_trial(s, lr, _probe(n), g, 0.8, SEL) for s, lr, n, g in
         [(20, 1e-3, 0.1, 0.8), (20, 1e-2, 0.6, 0.8), (60, 1e-3, 0.7, 0.8)]]
    assert selection.pick_stage1(t, SEL) == {"index": 1, "reached": True, "best_gap": 2}
    # none passes: the largest noise-only share among points within the gold bound (the 0.9 one fell too far)
    t = [selection.stage1_trial(s, lr, _probe(n), g, 0.8, SEL) for s, lr, n, g in
         [(20, 1e-3, 0.1, 0.8), (20, 1e-2, 0.3, 0.79), (60, 1e-3, 0.9, 0.5)]]
    assert selection.pick_stage1(t, SEL) == {"index": 1, "reached": False, "best_gap": 2}
    # nothing within the gold bound: the point that costs gold least (not the cheapest)
    t = [selection.stage1_trial(s, lr, _probe(0.9), g, 0.8, SEL) for s, lr, g in
         [(20, 1e-3, 0.1), (20, 1e-2, 0.3), (60, 1e-3, 0.2)]]
    assert selection.pick_stage1(t, SEL) == {"index": 1, "reached": False, "best_gap": 0}


def test_gold_end_share_bounds_the_rule():
    sel = SelectionConfig(**{**SEL.__dict__, "stage1_gold_end": 0.1})
    assert selection.stage1_trial(20, 1e-3, _probe(0.6, gold=0.1), 0.8, 0.8, sel)["passes"] is True
    ends_gold = selection.stage1_trial(20, 1e-3, _probe(0.6, gold=0.2), 0.8, 0.8, sel)
    assert ends_gold["passes"] is False and ends_gold["within_gold_bound"] is False
    assert ends_gold["gap"] == pytest.approx(0.4)


def test_stage1_bisection_between_too_weak_and_too_strong():
    """At the largest budget (60): 1e-3 does too little, 1e-2 costs gold; the next point is their geometric mean,
    then the bracket narrows on the side each new point falls; nothing without a bracket or after a pass."""
    sel = SelectionConfig(**{**SEL.__dict__, "stage1_bisect": 2})
    trial = lambda s, lr, n, g: selection.stage1_trial(s, lr, _probe(n), g, 0.8, sel)  # noqa: E731
    trials = [trial(20, 1e-3, 0.0, 0.8), trial(20, 1e-2, 0.1, 0.8), trial(60, 1e-3, 0.1, 0.8),
              trial(60, 1e-2, 1.0, 0.3)]
    assert selection.stage1_bisect_lr(trials, sel) == pytest.approx(10 ** -2.5)
    trials.append({**trial(60, 10 ** -2.5, 1.0, 0.5), "bisected": True})  # still too strong
    assert selection.stage1_bisect_lr(trials, sel) == pytest.approx(10 ** -2.75)
    trials.append({**trial(60, 10 ** -2.75, 0.2, 0.8), "bisected": True})
    assert selection.stage1_bisect_lr(trials, sel) is None  # two bisection points: the budget is spent
    assert selection.stage1_bisect_lr(trials[:4], SEL) is None  # stage1_bisect 0: the grid only
    assert selection.stage1_bisect_lr(trials[:3], sel) is None  # no too-strong point: no bracket
    passing = [trial(60, 1e-3, 0.6, 0.8), trial(60, 1e-2, 1.0, 0.3)]
    assert selection.stage1_bisect_lr(passing, sel) is None


def test_learning_rate_grid_widens_at_a_winning_edge():
    sel = SelectionConfig(lrs=[1e-4, 3e-4], widen=2)
    assert selection.widen_lr([(1e-4, 0.3), (3e-4, 0.4)], sel) == pytest.approx(9e-4)  # the top edge wins
    assert selection.widen_lr([(1e-4, 0.5), (3e-4, 0.4)], sel) == pytest.approx(1e-4 / 3)  # the bottom edge
    assert selection.widen_lr([(1e-4, 0.3), (3e-4, 0.4), (9e-4, 0.35)], sel) is None  # interior: done
    assert selection.interior([(1e-4, 0.3), (3e-4, 0.4), (9e-4, 0.35)]) is True
    capped = [(1e-4, 0.3), (3e-4, 0.4), (9e-4, 0.5), (2.7e-3, 0.6)]
    assert selection.widen_lr(capped, sel) is None and selection.interior(capped) is False  # the cap: 2 more
    assert selection.widen_lr([(1e-4, 0.3), (3e-4, 0.4)], SelectionConfig(lrs=[1e-4, 3e-4])) is None  # widen 0


def test_every_control_names_the_arm_it_controls_and_trains_the_same_stages():
    from neurorit import methods

    controls = {m.name: m.control_of for m in methods.METHODS.values() if m.control_of}
    assert controls == {"random_neurons": "neurorit", "random_neurons_only": "neurons_only",
                        "random_layers": "layer_tuning", "random_hard_deactivation": "neurorit_hard_deactivation",
                        "release_masks_transposed": "neurorit_release_masks"}
    for name, mined in controls.items():
        assert list(methods.get(name).stages) == list(methods.get(mined).stages)


def test_learning_rate_criterion_and_tie():
    assert selection.dev_score(_summary(top5=0.5, noise_only=0.2, gold=0.8), ["top5", "noise_only", "gold"]) == \
        pytest.approx(0.5)
    assert selection.pick_lr([(1e-5, 0.4), (1e-4, 0.6), (1e-3, 0.5)]) == 1e-4
    assert selection.pick_lr([(1e-5, 0.6), (1e-4, 0.6)]) == 1e-5  # a tie: the earlier value of the grid
    with pytest.raises(KeyError):
        selection.dev_score(_summary(top5=0.5), ["top5", "gold"])  # a setting not evaluated is an error, not 0


def test_report_copies_the_record(tmp_path):
    trials = [selection.stage1_trial(20, 1e-3, _probe(0.1), 0.8, 0.8, SEL),
              selection.stage1_trial(20, 1e-2, _probe(0.6), 0.79, 0.8, SEL)]
    record = selection.selection_record(SEL, {"trials": trials, **selection.pick_stage1(trials, SEL),
                                              "chosen": trials[1]},
                                        {"lora": {"key": "stage2.lora.lr", "scores": [[1e-4, 0.5], [1e-5, 0.4]],
                                                  "chosen": 1e-4}})
    sel_file = tmp_path / "selection.json"
    sel_file.write_text(json.dumps(record))
    evals = tmp_path / "eval"
    evals.mkdir()
    stats = {"match": 0.5, "em": 0.5, "f1": 0.5, "match_ci95": [0.4, 0.6], "n": 10}
    (evals / "base.eval.json").write_text(json.dumps({"name": "base", "settings": {"top5": stats}, "by_kind": {}}))
    paths = report.report(str(evals), str(tmp_path), selection_file=str(sel_file))
    results = json.loads(open(paths["json"]).read())
    assert results["selection"] == record and list(results["methods"]) == ["base"]
    md = open(paths["md"]).read()
    assert "reached" in md and "| 20 | 0.01 | 60.0% |" in md and "Chosen: 20 steps at lr 0.01." in md
    assert "| lora | stage2.lora.lr | 0.0001: 50.0, 1e-05: 40.0 | 0.0001 |  |  |" in md
    assert "Best gap (noise-only minus gold end share): 60.0% at 20 steps, lr 0.01" in md
    assert "(100 dev questions)" in md
    per_kind = {**record, "rules": {**record["rules"], "dev_per_kind": 50}}
    sel_file.write_text(json.dumps(per_kind))
    md = open(report.report(str(evals), str(tmp_path), selection_file=str(sel_file))["md"]).read()
    assert "(at most 50 dev questions of each kind)" in md
    with pytest.raises(UserError, match="no such file"):
        report.report(str(evals), str(tmp_path), selection_file=str(tmp_path / "missing.json"))


@pytest.mark.parametrize("overrides, message", [
    (["--selection.stage1_steps", "20"], "go together"),
    (["--selection.lrs", "0,1e-4"], "values > 0"),
    (["--selection.settings", "top5,nonsense"], "not allowed"),
    (["--selection.dev_examples", "0"], ">= 1"),
    (["--selection.widen", "-1"], ">= 0"),
    (["--selection.stage1_gold_end", "1.5"], "share in"),
])
def test_config_checks(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)


def _ended(noise: dict, gold: dict) -> dict:
    return {"noise_only": {"ended": noise}, "gold": {"ended": gold}}


def test_mined_vs_random_stage1_pairs_questions():
    """Per question (probed in both settings) the gap is ended-on-noise minus ended-on-gold; the arms are compared
    on the questions both have, with a paired interval."""
    mined = _ended({"a": 1, "b": 1, "c": 1, "d": 0}, {"a": 0, "b": 0, "c": 1, "d": 0})
    random = _ended({"a": 0, "b": 1, "c": 0, "d": 0, "e": 1}, {"a": 0, "b": 1, "c": 0, "d": 0, "e": 0})
    got = selection.mined_vs_random_stage1(mined, random)
    assert got["n"] == 4  # "e" was probed in one arm only
    assert got["mined_gap"] == pytest.approx(0.5) and got["random_gap"] == pytest.approx(0.0)
    assert got["difference"] == pytest.approx(0.5) and got["ci95"][0] <= 0.5 <= got["ci95"][1]
    same = selection.mined_vs_random_stage1(mined, mined)
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0]
