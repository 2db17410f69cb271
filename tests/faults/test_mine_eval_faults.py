"""kill -9 of one of 2 real ranks (torchrun) at a seeded random point of mining and of evaluation, then the same
command again: the re-run ends with byte-identical outputs (neuron statistics, neuron map; predictions) and the
killed state holds no file a later stage accepts (no neuron map without its statistics, a shard that does not
load, an ``eval.json`` done marker, a predictions file cut mid-line)."""
from __future__ import annotations

import json
import os

import pytest

from attribution.examples import offtopic_mining_pairs
from neurorit.records import load_records
from tests.faults import harness
from tests.support.workspaces import eval_checkpoint, eval_config, eval_records, mining_workspace

pytestmark = pytest.mark.distributed
MINED = ("neuron_stats.safetensors", "neuron_map.safetensors", "neuron_map.json", "summary.txt")
N_MINE = 11


@pytest.fixture(scope="module")
def mining(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mine_faults"))
    cfg = mining_workspace(root, n=N_MINE, steps=8, zero_stage=3)  # the lockstep path, where a kill is hardest
    out, ref = os.path.join(root, "out"), os.path.join(root, "ref")
    harness.run("attribution/mine.py", "--config", cfg, "--mining.output_dir", out, log=os.path.join(root, "ref.log"))
    os.rename(out, ref)  # the killed run writes into the same path: the map records its output_dir
    pairs = len(offtopic_mining_pairs(load_records(os.path.join(root, "records.jsonl"))))  # what the bar counts
    return cfg, ref, pairs


def test_mining_kill_one_rank_then_rerun(mining, tmp_path):
    cfg, ref, pairs = mining
    draw = harness.rng("mine")
    # under ZeRO-3 the ranks mine in lockstep and rank 0's bar moves 2 examples a round: an even count is shown
    rank, after, delay = draw.randrange(2), 2 * draw.randint(1, (pairs - 3) // 2), draw.uniform(0.0, 0.3)
    print(f"seed {harness.SEED}: kill rank {rank} {delay:.2f} s after {after} of {pairs} examples are mined")
    out = os.path.join(os.path.dirname(ref), "out")
    log = str(tmp_path / "killed.log")
    proc = harness.launch("attribution/mine.py", "--config", cfg, "--mining.output_dir", out, log=log)
    mined = f"| {after}/{pairs} ["  # the progress bar (rank 0; shards are written every example)
    result = harness.kill_rank_when(proc, log, lambda: mined in open(log, errors="replace").read(), rank, delay,
                                    f"{after} examples")
    assert result.killed and result.returncode != 0, result.output[-3000:]
    # nothing a later stage would take: the map comes with its statistics or not at all; shards all load
    assert not os.path.exists(os.path.join(out, "summary.txt"))  # the demo's done marker for mining
    if os.path.exists(os.path.join(out, "neuron_map.safetensors")):
        assert os.path.exists(os.path.join(out, "neuron_stats.safetensors"))
    harness.assert_safetensors_whole(out)

    rerun = harness.run("attribution/mine.py", "--config", cfg, "--mining.output_dir", out,
                        log=str(tmp_path / "rerun.log"))
    assert "already in" in rerun
    harness.assert_same_files(ref, out, names=list(MINED))


# --------------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval_faults"))
    model = eval_checkpoint(os.path.join(root, "model"))
    test_file = eval_records(os.path.join(root, "test.jsonl"), n_questions=200)  # 30 test questions x 5 settings / 2 = 75 batches
    config = eval_config(root, test_file, model, batch_size=2, max_new_tokens=6)
    ref = harness.run("rag/evaluate.py", "--config", config, "--name", "ref", "--no-progress",
                      log=os.path.join(root, "ref.log"))
    return root, config, os.path.join(root, "run", "eval"), ref


RUN_SPECIFIC = ("name", "seconds", "elapsed", "time", "timing")


def eval_result(path: str) -> dict:
    with open(path) as fh:
        return {k: v for k, v in json.load(fh).items() if k not in RUN_SPECIFIC}


def test_evaluation_kill_one_rank_then_rerun(evaluation, tmp_path):
    """Against the done-marker contract of rag/evaluate.py: ``<name>.eval.json`` appears only when the run is
    complete, ``<name>.predictions.jsonl`` is always complete JSONL; the re-run (resumable evaluation, issue 15
    item 2) gives the same predictions, byte for byte, and the same metrics."""
    root, config, out, _ = evaluation
    draw = harness.rng("eval")
    rank, delay = draw.randrange(2), draw.uniform(0.0, 0.3)
    partial = os.path.join(out, "killed.partial")
    batches = lambda: len(os.listdir(partial)) if os.path.isdir(partial) else 0  # noqa: E731
    after = draw.randint(2, 40)
    print(f"seed {harness.SEED}: kill rank {rank} {delay:.2f} s after {after} finished batches")
    log = str(tmp_path / "killed.log")
    args = ("rag/evaluate.py", "--config", config, "--name", "killed", "--no-progress")
    proc = harness.launch(*args, log=log)
    result = harness.kill_rank_when(proc, log, lambda: batches() >= after, rank, delay, f"{after} batches")
    assert result.killed and result.returncode != 0, result.output[-3000:]
    predictions = harness.assert_jsonl_whole(os.path.join(out, "killed.predictions.jsonl"))
    if os.path.exists(os.path.join(out, "killed.eval.json")):  # the kill came after the done marker: complete
        ref_lines = harness.assert_jsonl_whole(os.path.join(out, "ref.predictions.jsonl"))
        assert predictions == ref_lines, "a done marker next to incomplete predictions"
        print("the kill landed after the evaluation had finished")

    harness.run(*args, log=str(tmp_path / "rerun.log"))
    a, b = (open(os.path.join(out, f"{n}.predictions.jsonl"), "rb").read() for n in ("ref", "killed"))
    assert a == b, "predictions differ from the uninterrupted run"
    assert eval_result(os.path.join(out, "ref.eval.json")) == eval_result(os.path.join(out, "killed.eval.json"))
    assert not os.path.exists(partial)
