"""The demo chain (``scripts/demo.py --quick`` with tiny sizes, 2 ranks per step): kill -9 one rank of a seeded
random distributed step (mining, a training stage, an evaluation) at a random moment; the demo stops with one
line; the same command again skips the finished steps (their done markers), redoes the killed one and ends
with ``results.json`` byte-identical to an uninterrupted demo (and the same neuron map and exports)."""
from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.faults import harness

pytestmark = pytest.mark.distributed
TINY = ["--data.benchmark_questions", "400", "--mining.num_examples", "6", "--mining.steps", "4",
        "--stage1.max_steps", "3", "--stage2.max_steps", "3", "--stage1.save_every", "1", "--stage2.save_every", "1",
        "--eval.num_examples", "12", "--eval.batch_size", "8"]
COMPARED = ("results.json", "mining/neuron_map.safetensors", "mining/neuron_stats.safetensors",
            "neurorit/stage1/export/model.safetensors", "neurorit/stage2/export/model.safetensors",
            "neurorit_hard_deactivation/stage1/export/model.safetensors", "eval/neurorit.predictions.jsonl",
            "eval/base.predictions.jsonl")


def demo_args(root: str) -> list[str]:
    data = os.path.join(root, "benchmark")
    return ["scripts/demo.py", "--config", "configs/embedded.yaml", "--quick", *TINY,
            "--data.train_file", f"{data}/train.jsonl", "--data.dev_file", f"{data}/dev.jsonl",
            "--data.test_file", f"{data}/test.jsonl", "--runtime.output_dir", os.path.join(root, "demo")]


def test_demo_kill_one_rank_then_rerun(tmp_path):
    root = str(tmp_path)
    out = os.path.join(root, "demo")
    ref = harness.run_py(demo_args(root), log=os.path.join(root, "ref.log"))
    assert ref.returncode == 0, ref.output[-4000:]
    launched = [line for line in ref.output.splitlines() if line.startswith("== ") and "torchrun" in line]
    os.rename(out, os.path.join(root, "demo_ref"))  # same output_dir for both runs: the same paths inside files

    draw = harness.rng("demo")
    k, rank, delay = draw.randint(1, len(launched)), draw.randrange(2), draw.uniform(0.0, 3.0)
    target = launched[k - 1].split(":")[0]
    print(f"seed {harness.SEED}: kill rank {rank} of step {k}/{len(launched)} ({target}) {delay:.2f} s in")
    log = os.path.join(root, "killed.log")
    proc = harness.start([harness.sys.executable, *demo_args(root)], None, log)

    def ready() -> bool:  # the k-th distributed step is past DeepSpeed's comm init on both ranks
        text = open(log, errors="replace").read()
        lines = [i for i, line in enumerate(text.splitlines()) if line.startswith("== ") and "torchrun" in line]
        if len(lines) < k:
            return False
        after = "\n".join(text.splitlines()[lines[k - 1]:])
        return after.count(harness.DS_READY) >= 2 and bool(harness.rank_pids(proc.pid, rank))

    result = harness.kill_rank_when(proc, log, ready, rank, delay, target, timeout=1800)
    assert result.killed and result.returncode == 2, result.output[-4000:]
    errors = harness.error_lines(result.output, "error: step ")
    assert len(errors) == 1, result.output[-4000:]
    # nothing half-written that the next run's done-markers or stages would accept
    for folder in re.findall(r"--\w+\.output_dir (\S+)", "\n".join(launched)):
        export = os.path.join(folder, "export")
        if os.path.exists(os.path.join(folder, "train_summary.json")):
            assert os.path.isdir(export)
        harness.assert_loadable_or_absent_export(export)
    harness.assert_safetensors_whole(out)
    for name in os.listdir(os.path.join(out, "eval")) if os.path.isdir(os.path.join(out, "eval")) else []:
        if name.endswith(".predictions.jsonl"):
            harness.assert_jsonl_whole(os.path.join(out, "eval", name))

    again = harness.run_py(demo_args(root), log=os.path.join(root, "rerun.log"))
    assert again.returncode == 0, again.output[-4000:]
    assert "already done" in again.output
    for rel in COMPARED:
        harness.assert_same_file(os.path.join(root, "demo_ref", rel), os.path.join(out, rel))
    shutil.rmtree(os.path.join(root, "benchmark"), ignore_errors=True)
