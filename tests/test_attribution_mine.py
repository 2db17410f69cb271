"""attribution/mine.py end to end: one process in-process, and real 2-rank ZeRO-3 DeepSpeed runs (odd number of
examples, a killed rank and a resumed rerun) that must give the same statistics and neuron map."""
from __future__ import annotations

import json
import os

import pytest
import torch

from attribution.mine import main as mine_main
from neurorit.neuron_map import NeuronMap
from attribution.stats import EMPTY_PASSAGE, FIXED_ONE, OK, NeuronStats, shard_paths
from neurorit.neuron_map import MAP_JSON, MAP_TENSORS
from neurorit.run_layout import MiningFiles
from tests.support.workspaces import layout_paths, mining_workspace, unnamed_files


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The fixture and its uninterrupted one-process run (the reference for every other run)."""
    directory = str(tmp_path_factory.mktemp("mine"))
    cfg = mining_workspace(directory, n=8)  # 7 pairs: one question has no off-topic donor
    out = os.path.join(directory, "single")
    mine_main(["--config", cfg, "--mining.output_dir", out])
    return cfg, out


def _load(out: str) -> tuple[NeuronStats, NeuronMap]:
    return NeuronStats.load(os.path.join(out, "neuron_stats.safetensors")), NeuronMap.load(out)


def assert_same(out_a: str, out_b: str, exact: bool) -> None:
    """Integer statistics and the map always identical; float values bitwise when ``exact``, else to 1e-6
    (ZeRO-3 computes the same linear layers through its own autograd function: last-bit differences)."""
    (a, map_a), (b, map_b) = _load(out_a), _load(out_b)
    assert a.example_ids == b.example_ids
    for name in ("status", "truncated", "topk_ids"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    rtol = 0.0 if exact else 1e-6
    assert torch.allclose(a.topk_scores, b.topk_scores, rtol=rtol, atol=0)
    assert torch.allclose(a.f_input, b.f_input, rtol=rtol, atol=0)
    assert (a.norm_sum - b.norm_sum).abs().max() <= rtol * FIXED_ONE * len(a.example_ids)
    assert map_a.hash() == map_b.hash()


def test_single_process_outputs_and_idempotent_rerun(single, capsys):
    cfg, out = single
    for name in ("neuron_stats.safetensors", "neuron_map.safetensors", "neuron_map.json", "neuron_map.png",
                 "summary.txt", "config.yaml", "throughput.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    rate = json.load(open(os.path.join(out, "throughput.json")))
    assert rate["questions"] == 7 and rate["seconds"] > 0 and rate["questions_per_minute"] > 0
    assert os.listdir(os.path.join(out, "tensorboard"))
    # every file mining leaves for later stages is named by the run layout (the map's two by neuron_map.py)
    assert unnamed_files(out, layout_paths(MiningFiles(out)) | {MAP_TENSORS, MAP_JSON}) == []
    stats, nmap = _load(out)
    assert stats.status.tolist().count(OK) == 7 and stats.status.tolist().count(EMPTY_PASSAGE) == 0
    assert stats.status_counts()["passages truncated"] >= 1
    summary = open(os.path.join(out, "summary.txt")).read()
    assert "passages truncated:" in summary
    assert len(nmap.target_layers) == 1 and all(len(nmap.groups[g]) for g in nmap.groups)
    before = stats.tensors()
    mine_main(["--config", cfg, "--mining.output_dir", out])  # everything is in the shards: nothing to redo
    assert "7 examples already" in capsys.readouterr().err
    after, again = _load(out)
    assert all(torch.equal(before[k], v) for k, v in after.tensors().items())
    assert again.hash() == nmap.hash()


def test_bad_config_is_one_line_exit_2(single):
    cfg, out = single
    with pytest.raises(SystemExit) as err:
        mine_main(["--config", cfg, "--mining.output_dir", out + "-x", "--mining.file", "/nonexistent.jsonl"])
    assert err.value.code == 2


@pytest.fixture(scope="module")
def zero3(single, tmp_path_factory, run_ranks):
    """An uninterrupted 2-rank ZeRO-3 run over the 7 examples (odd: one rank runs stand-in passes)."""
    cfg, _ = single
    out = str(tmp_path_factory.mktemp("zero3") / "out")
    run_ranks("attribution/mine.py", "--config", cfg, "--mining.output_dir", out, "--mining.zero_stage", "3")
    return out


@pytest.mark.distributed
def test_two_rank_zero3_equals_one_process(single, zero3):
    shards = shard_paths(os.path.join(zero3, "stats"))
    assert sorted(os.path.basename(p) for p in shards) == ["shard-g0000-r00000.safetensors",
                                                           "shard-g0000-r00001.safetensors"]
    assert_same(single[1], zero3, exact=False)


@pytest.mark.distributed
def test_auto_replicates_a_model_that_fits_with_the_same_map(single, zero3, tmp_path, run_ranks):
    """mining.zero_stage auto (the default) keeps a whole copy per rank when it fits, and mines the same map as
    ZeRO-3 and as one process; its progress bar counts every rank's examples and ends at 100%."""
    cfg, _ = single
    out = str(tmp_path / "replicated")
    printed = run_ranks("attribution/mine.py", "--config", cfg, "--mining.output_dir", out)
    assert "mining.zero_stage auto: a whole copy per rank" in printed.stderr
    bars = [part for part in printed.stderr.replace("\r", "\n").splitlines() if part.startswith("mining:")]
    assert bars and bars[-1].startswith("mining: 100%"), bars[-3:]
    assert NeuronMap.load(out).hash() == NeuronMap.load(zero3).hash() == NeuronMap.load(single[1]).hash()


@pytest.mark.slow  # a kill / resume / clean-exit check of real ranks: make test-faults (in .ci/run)
@pytest.mark.distributed
def test_killed_rank_then_rerun_gives_identical_statistics(single, zero3, tmp_path, run_ranks):
    cfg, out_single = single
    out = str(tmp_path / "killed")
    mine = ("attribution/mine.py", "--config", cfg, "--mining.output_dir", out, "--mining.zero_stage", "3")
    crashed = run_ranks(*mine, env={"NEURORIT_MINE_KILL_AFTER": "1:1"}, check=False)
    assert crashed.returncode != 0
    assert not os.path.exists(os.path.join(out, "neuron_stats.safetensors"))
    assert shard_paths(os.path.join(out, "stats"))
    rerun = run_ranks(*mine)  # asserts exit 0
    assert "already in" in rerun.stderr
    assert_same(zero3, out, exact=True)
    assert_same(out_single, out, exact=False)


def _diagnostics(out: str) -> dict:
    return json.load(open(os.path.join(out, "diagnostics.json")))


def test_summary_and_file_hold_the_diagnostics(single):
    _, out = single
    diag = _diagnostics(out)
    stats, nmap = _load(out)
    assert {g: f["got"] for g, f in diag["fill"].items()} == {g: len(nmap.groups[g]) for g in nmap.groups}
    assert diag["separation"]["examples"] == 7
    assert sum(diag["stability"]["examples"]) == 7  # the 7 OK examples split into even / odd indices
    summary = open(os.path.join(out, "summary.txt")).read()
    assert "fill: relevant_only" in summary and "stability (even / odd halves" in summary
    assert "separation: mean F relevant" in summary
    assert summary.count("WARNING") == len(diag["warnings"])


@pytest.mark.distributed
def test_two_rank_zero3_gives_the_same_diagnostics(single, zero3):
    a, b = _diagnostics(single[1]), _diagnostics(zero3)
    assert a["fill"] == b["fill"] and a["stability"] == b["stability"] and a["warnings"] == b["warnings"]
    for key, value in a["separation"].items():
        assert abs(value - b["separation"][key]) <= 1e-6 * max(1.0, abs(value)), key


@pytest.mark.distributed
def test_two_rank_zero3_mines_a_several_token_target_as_one_process(tmp_path, run_ranks):
    """``answer_seq_logprob`` over answers of one and of two words: the ranks' rows carry tails of different
    lengths, yet every rank runs the same passes (ZeRO-3 lockstep) and the map is one process's."""
    cfg = mining_workspace(str(tmp_path), n=8)
    path = tmp_path / "records.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for i, record in enumerate(records):
        if i % 2:  # the passage holds "the <value> city": the two-word answer is still in the relevant one
            record["answers"] = [record["answers"][0] + " city"]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    single, zero3 = str(tmp_path / "single"), str(tmp_path / "zero3")
    args = ["--config", cfg, "--mining.target", "answer_seq_logprob"]
    mine_main([*args, "--mining.output_dir", single])
    assert (_load(single)[0].status == OK).sum() >= 4
    run_ranks("attribution/mine.py", *args, "--mining.output_dir", zero3, "--mining.zero_stage", "3")
    assert_same(single, zero3, exact=False)
