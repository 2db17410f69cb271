"""Mining diagnostics (attribution/diagnostics.py): fill, separation, half-split stability and their warnings,
by hand on a tiny statistics table, and the half split against mining each half on its own."""
import torch

from attribution.diagnostics import STABILITY_WARN, diagnostics_text, jaccard, mining_diagnostics
from attribution.selection import example_topk, neuron_map_from_stats, select_groups
from attribution.stats import OK, ExampleResult, NeuronStats, RankStats, reduce_stats

SIZES = {"relevant_only": 2, "irrelevant_only": 2, "shared": 1}
FP = {"architecture": "llama", "num_layers": 1, "intermediate_size": 6}


def _stats(topk: list, f_input: list, status=None) -> NeuronStats:
    n = len(topk)
    ids = torch.tensor(topk, dtype=torch.long)
    return NeuronStats([f"q{i}" for i in range(n)], torch.tensor(status or [OK] * n), torch.zeros(n, dtype=torch.long),
                       ids, (ids >= 0).double(), torch.tensor(f_input, dtype=torch.float64),
                       torch.zeros(2, 1, 6, dtype=torch.long))


def _hand() -> NeuronStats:
    return _stats([[[0, 1], [2, -1]], [[0, 3], [2, 4]], [[1, -1], [5, -1]], [[0, -1], [4, -1]]],
                  [[0.9, 0.1], [0.2, 0.3], [0.8, 0.4], [0.7, 0.1]])


def test_by_hand():
    stats = _hand()
    nmap = neuron_map_from_stats(stats, SIZES, 1, FP, {})
    diag = mining_diagnostics(stats, nmap, SIZES)
    assert [diag["fill"][g]["got"] for g in SIZES] == [2, 2, 0]
    sep = diag["separation"]
    assert abs(sep["mean_relevant"] - 0.65) < 1e-12 and abs(sep["mean_irrelevant"] - 0.225) < 1e-12
    assert sep["share_relevant_above"] == 0.75
    # even half (q0, q2): relevant-only {0, 1}, irrelevant-only {2, 5}; odd half (q1, q3): {0, 3}, {2, 4}
    groups = diag["stability"]["groups"]
    assert abs(groups["relevant_only"]["jaccard"] - 1 / 3) < 1e-12
    assert abs(groups["irrelevant_only"]["jaccard"] - 1 / 3) < 1e-12
    assert groups["shared"] == {"sizes": [0, 0], "jaccard": 0.0}
    assert diag["stability"]["examples"] == [2, 2]
    assert len(diag["warnings"]) == 2  # shared under-filled and unstable; 1/3 >= STABILITY_WARN passes
    assert all("shared" in w for w in diag["warnings"]) and 1 / 3 >= STABILITY_WARN
    text = diagnostics_text(diag)
    assert "fill: relevant_only 2/2, irrelevant_only 2/2, shared 0/1" in text and text.count("WARNING") == 2


def test_separation_warning_and_skipped_examples_left_out():
    stats = _stats([[[0, 1], [2, -1]], [[0, 3], [2, 4]], [[1, -1], [5, -1]]],
                   [[0.1, 0.9], [0.2, 0.3], [0.9, 0.1]], status=[OK, OK, 3])
    diag = mining_diagnostics(stats, neuron_map_from_stats(stats, SIZES, 1, FP, {}), SIZES)
    assert diag["separation"]["examples"] == 2 and diag["separation"]["share_relevant_above"] == 0.0
    assert diag["stability"]["examples"] == [1, 1]  # q2 (even) was skipped
    assert any("does not separate" in w for w in diag["warnings"])


def _random_results(n: int, layers=2, width=16, k=4) -> list[ExampleResult]:
    out = []
    for i in range(n):
        attr = torch.randn(2, layers, width, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        tops = [example_topk(a, 0.1, k) for a in attr]
        out.append(ExampleResult(i, OK, 0, torch.stack([t[0] for t in tops]), torch.stack([t[1] for t in tops]),
                                 torch.rand(2, generator=torch.Generator().manual_seed(100 + i), dtype=torch.float64),
                                 attr))
    return out


def _reduce(results: list[ExampleResult]) -> NeuronStats:
    part = RankStats(2, 16, 4)
    for j, r in enumerate(results):
        part.add(ExampleResult(j, r.status, r.truncated, r.topk_ids, r.topk_scores, r.f_input, r.attributions))
    return reduce_stats([part], [f"q{j}" for j in range(len(results))], 2, 16, 4)


def test_half_split_equals_mining_each_half_alone():
    results = _random_results(11)
    sizes = {"relevant_only": 6, "irrelevant_only": 6, "shared": 3}
    whole = _reduce(results)
    fp = {"architecture": "llama", "num_layers": 2, "intermediate_size": 16}
    diag = mining_diagnostics(whole, neuron_map_from_stats(whole, sizes, 1, fp, {}), sizes)
    alone = [_reduce(results[start::2]) for start in (0, 1)]
    groups = [select_groups(s.counts(), s.score_sums(), sizes) for s in alone]
    for g in sizes:
        assert diag["stability"]["groups"][g]["sizes"] == [len(groups[0][g]), len(groups[1][g])]
        assert diag["stability"]["groups"][g]["jaccard"] == jaccard(groups[0][g], groups[1][g])
    assert diag["stability"]["examples"] == [6, 5]


def test_jaccard():
    assert jaccard(torch.tensor([1, 2, 3]), torch.tensor([3, 4])) == 0.25
    assert jaccard(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)) == 0.0
