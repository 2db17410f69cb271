"""The demo's dev selection end to end (``scripts/demo.py --quick`` on the embedded model, 1 rank, tiny sizes, about 4
minutes: ``make test-pipeline``): the stage-1 grid is tried in order on Neuro-RIT's stage 1 with its probe and dev
gold-only evaluation; every stage 1 then trains at the chosen point; each trained method's stage 2 runs at every
learning rate of the grid, and one more beyond a winning edge, and is scored on dev; a random control and its mined
arm share one learning rate; ``--methods`` runs the methods named and no other; the test evaluation reads the chosen
exports; results.json carries the record; ``--diagnose`` probes the targets first and ``mining.target auto`` mines
with its choice without probing again. Tests run no script by import: the demo is a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.ranks import ROOT, child_env

pytestmark = pytest.mark.slow
LRS = [1e-5, 1e-3]


def test_demo_chooses_on_dev_and_reports_it(tmp_path):
    data, out = tmp_path / "benchmark", tmp_path / "demo"
    cmd = [sys.executable, "scripts/demo.py", "--config", "configs/embedded.yaml", "--quick", "--ranks", "1",
           "--data.benchmark_questions", "400", "--data.train_file", f"{data}/train.jsonl",
           "--data.dev_file", f"{data}/dev.jsonl", "--data.test_file", f"{data}/test.jsonl",
           "--mining.num_examples", "6", "--mining.steps", "4", "--stage1.max_steps", "2", "--stage2.max_steps", "2",
           "--eval.num_examples", "12", "--eval.batch_size", "8", "--runtime.output_dir", str(out),
           "--selection.lrs", ",".join(map(str, LRS)), "--selection.stage1_steps", "3,4",
           "--selection.stage1_lrs", "1e-3", "--selection.stage1_noise_end", "0.0", "--selection.dev_examples", "8",
           "--selection.widen", "1", "--selection.share_control_lr", "true", "--diagnose", "--mining.target", "auto",
           "--methods", "base,neurorit_release_masks,neurons_only,random_neurons_only,random_layers"]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(None), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    chosen = json.loads((out / "mining" / "diagnosis.json").read_text())["chosen"]
    assert f"mining.target auto: {chosen} (reusing the probe of " in proc.stderr
    assert json.loads((out / "mining" / "neuron_map.json").read_text())["provenance"]["mining"]["target"] == chosen
    assert {"diagnose", "mine"} <= set(json.loads((out / "timings.json").read_text()))
    record = json.loads((out / "selection" / "selection.json").read_text())
    # stage 1: the first point passes (a share >= 0 always does, the gold bound holds at 3 steps): the grid stops there
    s1 = record["stage1"]
    assert [(t["max_steps"], t["lr"]) for t in s1["trials"]] == [(3, 1e-3)] and s1["reached"] and s1["index"] == 0
    probe = json.loads((out / "selection" / "stage1" / "steps3_lr0.001" / "probe.json").read_text())
    assert s1["trials"][0]["noise_end_share"] == probe["noise_only"]["end_share"]
    # every stage 1 trained at the chosen point (3 steps; stage1.max_steps says 2)
    summary = json.loads((out / "neurorit_release_masks" / "stage1" / "train_summary.json").read_text())
    assert summary["step"] == 3, summary
    # stage 2: each trained method at every lr, one more beyond an edge that wins, scored on dev; the test
    # evaluation reads the chosen export. The methods named ran: neurons_only and its random twin share one
    # choice scored by their mean; random_layers' mined arm (layer_tuning) did not run, the release's arm has no
    # control here: each alone.
    assert set(record["stage2"]) == {"neurorit_release_masks", "neurons_only", "random_neurons_only",
                                     "random_layers"}
    for name, m in record["stage2"].items():
        tried = [s[0] for s in m["scores"]]
        assert tried[:2] == LRS and len(tried) == 3 and m["chosen"] in tried and m["key"] == "stage2.lr"
        assert tried[2] == pytest.approx(LRS[0] / 3 if m["scores"][0][1] >= m["scores"][1][1] else LRS[1] * 3)
        assert m["interior"] == (m["chosen"] == sorted(tried)[1])
        arms = [name, m["shared_with"]] if "shared_with" in m else [name]
        for lr, score in m["scores"]:
            devs = [json.loads((out / "selection" / "eval" / f"{arm}_lr{lr:g}.eval.json").read_text())
                    for arm in arms]
            assert all(d["test_file"].endswith("dev.jsonl") and d["num_questions"] == 8 for d in devs)
            per_arm = [sum(d["settings"][s]["match"] for s in record["rules"]["settings"]) / 3 for d in devs]
            assert score == pytest.approx(sum(per_arm) / len(per_arm))
        evaluated = json.loads((out / "eval" / f"{name}.eval.json").read_text())["model"]
        assert evaluated == str(out / "selection" / name / f"lr{m['chosen']:g}" / "stage2" / "export")
    assert record["stage2"]["neurons_only"]["shared_with"] == "random_neurons_only"
    assert record["stage2"]["random_neurons_only"]["shared_with"] == "neurons_only"
    assert record["stage2"]["neurons_only"]["scores"] == record["stage2"]["random_neurons_only"]["scores"]
    assert "shared_with" not in record["stage2"]["random_layers"]
    assert "shared_with" not in record["stage2"]["neurorit_release_masks"]
    evaluated = {n[:-len(".eval.json")] for n in os.listdir(out / "eval") if n.endswith(".eval.json")}
    assert evaluated == {"base", "neurorit_release_masks", "neurons_only", "random_neurons_only", "random_layers"}
    assert json.loads((out / "results.json").read_text())["selection"] == record
