"""Selection, statistics (shards, reduction, fixed point), the neuron map file, and bad mining input."""
from __future__ import annotations

import json
import os

import pytest
import torch

from attribution.examples import ExampleBuilder
from neurorit.prompts import PromptBuilder
from attribution.mine import Miner, attribute
from model_patches import model_fingerprint
from neurorit.neuron_map import NeuronMap
from attribution.selection import example_topk, neuron_map_from_stats, select_groups, target_layers
from attribution.stats import (EMPTY_PASSAGE, FIXED_ONE, NO_ANSWER_TOKEN, NON_FINITE, OK, TOO_LONG, ExampleResult,
                               NeuronStats, RankStats, reduce_stats, scan_shards, shard_path)
from neurorit.config import ExperimentConfig
from neurorit.errors import UserError
from neurorit.records import Passage, Record
from tests.support.workspaces import mining_tokenizer

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------- selection
def test_example_topk_threshold_and_ties():
    attr = torch.tensor([[1.0, 0.05, 0.5, 0.5], [-3.0, 0.2, 0.09, 0.5]])
    ids, scores = example_topk(attr, 0.1, 4)
    assert ids.tolist() == [0, 2, 3, 7]  # ties (0.5) go to the lower flat id; -3 and 0.09 < 0.1 x max are out
    assert scores.tolist() == [1.0, 0.5, 0.5, 0.5]
    ids, _ = example_topk(attr, 0.1, 8)
    assert ids.tolist() == [0, 2, 3, 7, 5, -1, -1, -1]
    ids, scores = example_topk(-attr.abs(), 0.1, 3)
    assert ids.tolist() == [-1, -1, -1] and scores.abs().sum() == 0


def test_select_groups_and_target_layers():
    counts = torch.zeros(2, 3, 4, dtype=torch.long)
    counts[0, 0, 0], counts[0, 0, 1], counts[0, 2, 3] = 5, 2, 2  # relevant side
    counts[1, 0, 0], counts[1, 2, 0], counts[1, 2, 1], counts[1, 1, 2] = 1, 4, 4, 1  # irrelevant side
    scores = counts.double()
    scores[0, 2, 3] = 9.0  # breaks the count tie between (0, 1) and (2, 3)
    groups = select_groups(counts, scores, {"relevant_only": 5, "irrelevant_only": 2, "shared": 5})
    assert groups["shared"].tolist() == [0]
    assert groups["relevant_only"].tolist() == [11, 1]
    assert groups["irrelevant_only"].tolist() == [8, 9]  # (1, 2) cut by the size limit
    assert target_layers(groups, 4, 3, 1) == [2]
    assert target_layers(groups, 4, 3, 2) == [0, 2]


# -------------------------------------------------------------------------------------------- statistics
def _result(index: int, layers=2, width=4, k=3, seed=0, status=OK) -> ExampleResult:
    attr = torch.randn(2, layers, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    tops = [example_topk(a, 0.1, k) for a in attr]
    return ExampleResult(index, status, index % 2, torch.stack([t[0] for t in tops]),
                         torch.stack([t[1] for t in tops]), torch.tensor([0.5, 0.25], dtype=torch.float64),
                         attr if status == OK else None)


def test_reduce_is_independent_of_how_examples_are_split(tmp_path):
    results = [_result(i, seed=i) for i in range(5)]
    whole = RankStats(2, 4, 3)
    for r in results:
        whole.add(r)
    a, b = RankStats(2, 4, 3), RankStats(2, 4, 3)
    for r in results[::-1]:
        (a if r.index % 2 else b).add(r)
    ids = [f"q{i}" for i in range(5)]
    one = reduce_stats([whole], ids, 2, 4, 3)
    two = reduce_stats([a, b], ids, 2, 4, 3)
    for name, t in one.tensors().items():
        assert torch.equal(t, two.tensors()[name]), name
    assert one.counts().sum() == int((one.topk_ids >= 0).sum())
    # the fixed-point normalized sum is the exact mean of attr / max|attr| up to one unit per example
    expected = sum(r.attributions / r.attributions.abs().flatten(1).max(1).values.view(2, 1, 1) for r in results) / 5
    assert torch.allclose(one.mean_normalized(), expected, atol=5 / FIXED_ONE)
    path = str(tmp_path / "stats.safetensors")
    one.save(path)
    back = NeuronStats.load(path)
    assert back.example_ids == ids and torch.equal(back.norm_sum, one.norm_sum)


def test_reduce_refuses_an_example_counted_twice():
    a, b = RankStats(2, 4, 3), RankStats(2, 4, 3)
    a.add(_result(0))
    b.add(_result(0))
    with pytest.raises(RuntimeError, match="twice"):
        reduce_stats([a, b], ["q0"], 2, 4, 3)


def test_shards_roundtrip_resume_and_foreign_run(tmp_path):
    stats_dir = str(tmp_path / "stats")
    os.makedirs(stats_dir)
    part = RankStats(2, 4, 3)
    for i in (0, 2, 5):
        part.add(_result(i, seed=i, status=OK if i != 2 else EMPTY_PASSAGE))
    part.save(shard_path(stats_dir, 0, 1), "run-A")
    open(os.path.join(stats_dir, "shard-g0000-r00000.safetensors.tmp123"), "w").write("half")
    state = scan_shards(stats_dir, "run-A", 2, 4, 3)
    assert state.done == {0, 2, 5} and state.generation == 1
    assert not [f for f in os.listdir(stats_dir) if ".tmp" in f]
    back = RankStats.load(state.paths[0], 2, 4, 3)
    assert back.indices == [0, 2, 5] and back.status[1] == EMPTY_PASSAGE
    assert torch.equal(back.norm_sum, part.norm_sum)
    with pytest.raises(UserError, match="another mining run"):
        scan_shards(stats_dir, "run-B", 2, 4, 3)


# ------------------------------------------------------------------------------------------- neuron map
def _map(model) -> NeuronMap:
    results = [_result(i, layers=2, width=128, k=6, seed=i) for i in range(6)]
    part = RankStats(2, 128, 6)
    for r in results:
        part.add(r)
    stats = reduce_stats([part], [f"q{i}" for i in range(6)], 2, 128, 6)
    sizes = {"relevant_only": 5, "irrelevant_only": 5, "shared": 2}
    return neuron_map_from_stats(stats, sizes, 1, model_fingerprint(model), {"note": "test"})


def test_neuron_map_roundtrip_views_and_hash(tmp_path, tiny_model):
    model = tiny_model("llama", layers=2)
    nmap = _map(model)
    nmap.save(str(tmp_path))
    back = NeuronMap.load(str(tmp_path))
    assert back.hash() == nmap.hash() and back.target_layers == nmap.target_layers
    assert NeuronMap.load(str(tmp_path / "neuron_map.json")).hash() == nmap.hash()
    readable = json.loads((tmp_path / "neuron_map.json").read_text())
    assert readable["fingerprint"] == {"architecture": "llama", "num_layers": 2, "intermediate_size": 128}
    assert readable["sizes"]["relevant_only"] == len(nmap.groups["relevant_only"]) <= 5
    assert set(readable["groups"]["shared"][0]) == {"layer", "neuron", "relevant_count", "irrelevant_count"}
    per_layer = back.per_layer("irrelevant_only")
    assert sum(len(v) for v in per_layer.values()) == len(nmap.groups["irrelevant_only"])
    assert all(torch.equal(v, torch.sort(v).values) for v in per_layer.values())
    back.check_fingerprint(model_fingerprint(model))
    with pytest.raises(UserError, match="unknown neuron group"):
        back.per_layer("nope")


@pytest.mark.parametrize("other", [dict(layers=3), dict(layers=2, intermediate=96)])
def test_neuron_map_refuses_a_model_of_another_shape(other, tiny_model):
    nmap = _map(tiny_model("llama", layers=2))
    with pytest.raises(UserError, match="mined on a different model"):
        nmap.check_fingerprint(model_fingerprint(tiny_model("llama", **other)))


def test_neuron_map_load_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        NeuronMap.load(str(tmp_path))
    (tmp_path / "neuron_map.safetensors").write_text("not a safetensors file")
    with pytest.raises(UserError, match="not a neuron map"):
        NeuronMap.load(str(tmp_path))


# ------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def tokenizer():
    return mining_tokenizer()


def _record(answer="red", rel="alpha lives in the red city", irr="beta gamma", question="where alpha lives"):
    return Record("r", question, [answer], [Passage("", rel), Passage("", irr)]), Passage("", rel), Passage("", irr)


@pytest.mark.parametrize("target", ["yes_prob", "answer_logprob"])
def test_examples_bad_input_is_counted_not_fatal(tokenizer, target):
    builder = ExampleBuilder(tokenizer, PromptBuilder("compact"), target, "query", max_length=24)
    ok = builder.build(0, *_record())
    assert ok.status == OK and ok.truncated == 0
    rel, irr = ok.inputs
    assert rel.baseline_ids is irr.baseline_ids and len(rel.baseline_ids) < len(rel.input_ids)
    assert builder.build(1, *_record(answer="   ")).status == NO_ANSWER_TOKEN
    assert builder.build(2, *_record(irr=" ")).status == EMPTY_PASSAGE
    long = builder.build(3, *_record(rel=" ".join(["alpha"] * 60)))
    assert long.status == OK and long.truncated == 1 and len(long.inputs[0].input_ids) == 24
    assert builder.build(4, *_record(question=" ".join(["what"] * 40))).status == TOO_LONG


def test_non_finite_attribution_skips_the_example(tokenizer, tiny_model):
    model = tiny_model("llama", layers=2, vocab=len(tokenizer))
    model.requires_grad_(False)
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("nan")
    from model_patches.patcher import patch_model

    patcher = patch_model(model)
    builder = ExampleBuilder(tokenizer, PromptBuilder("compact"), "yes_prob", "query", max_length=48)
    ex = builder.build(0, *_record())
    cfg = ExperimentConfig()
    cfg.mining.steps, cfg.mining.top_k, cfg.mining.chunk_rows = 2, 5, 64  # auto is resolved by mine.main
    res = attribute(Miner(cfg, model, patcher, builder, lockstep=True), ex, builder.pad_inputs())
    assert res.status == NON_FINITE and res.attributions is None
