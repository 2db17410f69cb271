"""attribution/diagnose.py: the paired effect, the rule of ``mining.target auto`` and its verdict, the command on a
tiny model (a row per registered target, progress lines, the files of the run layout), and ``mine`` with
``mining.target auto`` mining with the target the diagnosis chose."""
from __future__ import annotations

import json
import os

import pytest

from attribution import diagnose
from attribution.diagnose import Separation, choose, paired_effect, verdict
from attribution.mine import main as mine_main
from attribution.targets import TARGETS
from neurorit.errors import UserError
from tests.support.workspaces import mining_workspace


def _row(name: str, dz: float, wins: float = 0.8, usable: bool = True) -> Separation:
    return Separation(name, 10, usable, "" if usable else "refused", 1.0, 0.5, 0.4, wins, dz, 0.5, 0.1)


def test_paired_effect():
    assert paired_effect([1.0, 2.0, 3.0]) == pytest.approx(2.0)  # mean 2, sd 1
    assert paired_effect([-1.0, -3.0]) == pytest.approx(-2.0 / 2 ** 0.5)
    assert paired_effect([0.5, 0.5]) == 0.0 and paired_effect([1.0]) == 0.0


def test_rule_takes_the_largest_effect_among_usable_targets_and_the_verdict_follows_the_threshold():
    rows = [_row("a", 0.4), _row("b", 1.3, usable=False), _row("c", 0.9), _row("d", -2.0)]
    assert choose(rows).target == "c"
    assert verdict(choose(rows), 0.5).startswith("verdict: worth mining: c separates")
    assert verdict(choose(rows), 1.0).startswith("verdict: not worth mining: no target separates")
    assert verdict(_row("e", 0.9, wins=0.5), 0.5).startswith("verdict: not worth mining")
    assert verdict(choose(rows), 0.5, ["relevant_only"]).startswith(
        "verdict: worth mining, not yet worth training on: c separates")
    assert "map's relevant_only differ between halves" in verdict(choose(rows), 0.5, ["relevant_only"])
    assert verdict(choose(rows), 1.0, ["relevant_only"]).startswith("verdict: not worth mining")
    with pytest.raises(UserError, match="mining.target auto: no registered attribution target can be mined here"):
        choose([_row("b", 1.0, usable=False)])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return mining_workspace(str(tmp_path_factory.mktemp("diagnose")), n=8)


def test_diagnose_command_on_a_tiny_model(workspace, tmp_path, capsys):
    out = str(tmp_path / "mining")
    diagnose.main(["--config", workspace, "--mining.output_dir", out])
    captured = capsys.readouterr()
    assert "diagnose: 7/7 questions" in captured.err
    text = open(os.path.join(out, "diagnosis.txt")).read()
    body = json.load(open(os.path.join(out, "diagnosis.json")))
    assert [r["target"] for r in body["targets"]] == list(TARGETS)
    for name in TARGETS:
        assert f"| {name} | " in text
    usable = [r for r in body["targets"] if r["usable"] and r["questions"]]
    assert body["chosen"] == max(usable, key=lambda r: r["dz"])["target"]
    assert all(r["usable"] for r in body["targets"])  # every target runs on the fast path
    assert all(r["questions"] == 7 for r in usable)
    lines = text.strip().splitlines()
    assert lines[-1] == body["verdict"] and lines[-1].startswith("verdict: ")
    assert f"-> {body['chosen']}" in text and text.strip() in captured.out


def test_mine_with_auto_target_mines_with_the_chosen_one(workspace, tmp_path):
    out = str(tmp_path / "mining")
    mine_main(["--config", workspace, "--mining.target", "auto", "--mining.output_dir", out])
    chosen = json.load(open(os.path.join(out, "diagnosis.json")))["chosen"]
    assert chosen in TARGETS
    assert f"target: {chosen}" in open(os.path.join(out, "config.yaml")).read()
    assert json.load(open(os.path.join(out, "neuron_map.json")))["provenance"]["mining"]["target"] == chosen
    text = open(os.path.join(out, "diagnosis.txt")).read()  # rewritten after mining: the map's fill quoted
    assert f"(mined with {chosen}): fill relevant_only 6/6" in text and "half-split Jaccard relevant_only" in text


def test_mine_with_auto_reuses_a_diagnosis_of_the_same_probe_and_not_another(workspace, tmp_path, capsys):
    out = str(tmp_path / "mining")
    diagnose.main(["--config", workspace, "--mining.output_dir", out])
    body = json.load(open(os.path.join(out, "diagnosis.json")))
    stale = dict(body, targets=[dict(r, usable=False, refusal="an older code's refusal") if r["target"] ==
                                body["chosen"] else r for r in body["targets"]])
    with open(os.path.join(out, "diagnosis.json"), "w") as fh:  # usability is asked again, not read
        json.dump(stale, fh)
    capsys.readouterr()
    mine_main(["--config", workspace, "--mining.target", "auto", "--mining.output_dir", out])
    err = capsys.readouterr().err
    assert f"mining.target auto: {body['chosen']} (reusing the probe of " in err and "diagnose: 7/7 questions" not in err
    again = json.load(open(os.path.join(out, "diagnosis.json")))
    assert again["key"] == body["key"] and again["targets"] == body["targets"]
    # another probe (a shorter context: other prompts) is not the one on disk: probed again
    other = str(tmp_path / "other")
    os.makedirs(other)
    os.link(os.path.join(out, "diagnosis.json"), os.path.join(other, "diagnosis.json"))
    mine_main(["--config", workspace, "--mining.target", "auto", "--mining.output_dir", other,
               "--data.max_length", "200"])
    err = capsys.readouterr().err
    assert "diagnose: 7/7 questions" in err and "(probed)" in err


def test_diagnose_again_reuses_its_probe_and_quotes_stage_one_mined_vs_random(workspace, tmp_path, capsys):
    out, root = str(tmp_path / "run" / "mining"), tmp_path / "run"
    args = ["--config", workspace, "--mining.output_dir", out, "--runtime.output_dir", str(root)]
    diagnose.main(args)
    first = json.load(open(os.path.join(out, "diagnosis.json")))
    (root / "selection").mkdir()
    mvr = {"n": 40, "mined_gap": 0.35, "random_gap": 0.05, "difference": 0.3, "ci95": [0.15, 0.45]}
    (root / "selection" / "selection.json").write_text(json.dumps(
        {"stage1": {"chosen": {"max_steps": 40, "lr": 0.0003}, "mined_vs_random": mvr}}))
    capsys.readouterr()
    diagnose.main(args)
    captured = capsys.readouterr()
    assert "diagnose: reusing the probe of" in captured.err and "diagnose: 7/7 questions" not in captured.err
    text = open(os.path.join(out, "diagnosis.txt")).read().strip().splitlines()
    assert json.load(open(os.path.join(out, "diagnosis.json")))["targets"] == first["targets"]
    assert text[-2] == (f"stage 1 at the dev-chosen point (40 steps, lr 0.0003; {root / 'selection' / 'selection.json'}"
                        f"): noise-only minus gold-only end share, mined 0.350 vs random 0.050 on 40 dev questions, "
                        f"difference +0.300 (95% CI +0.150 to +0.450)")
    assert text[-1].startswith("verdict: ")


def test_shared_forwards_give_each_job_its_own_forwards_value():
    """read_values runs one pass per longest sequence; each job's F equals a pass over its own ids."""
    import torch

    from tests.support.models import tiny_model

    model = tiny_model("llama", layers=2)
    gen = torch.Generator().manual_seed(4)
    prompt, other = torch.randint(3, 97, (15,), generator=gen), torch.randint(3, 97, (11,), generator=gen)
    word, first, seq = TARGETS["yes_prob"].of([5, 9]), TARGETS["answer_logprob"].of([31]), \
        TARGETS["answer_seq_logprob"].of([31, 8, 60])
    jobs = [(torch.cat([prompt, torch.tensor([5])]), word), (prompt, first),
            (torch.cat([prompt, torch.tensor([31, 8])]), seq), (other, first)]
    shared = diagnose.read_values(model, jobs)
    with torch.no_grad():
        alone = [float(t.value(model(input_ids=ids.view(1, -1)).logits[:, -t.reads:])[0]) for ids, t in jobs]
    assert shared == pytest.approx(alone, rel=1e-5, abs=1e-6)
    assert len(set(shared)) == 4
