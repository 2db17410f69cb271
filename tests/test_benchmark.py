"""Embedded benchmark: determinism, schema, distractor kinds, ranking, and no test instance seen in training."""
import hashlib
import subprocess
import sys

from benchmarks.embedded.benchmark import build_benchmark
from neurorit.records import load_records


def _digest(splits):
    return hashlib.sha256(repr([r.to_json() for s in splits.values() for r in s]).encode()).hexdigest()


def test_deterministic_and_seed_sensitive():
    assert _digest(build_benchmark(3, 200)) == _digest(build_benchmark(3, 200))
    assert _digest(build_benchmark(3, 200)) != _digest(build_benchmark(4, 200))


def test_same_bytes_on_disk(tmp_path):
    outs = []
    for i in range(2):
        d = tmp_path / str(i)
        args = [f"--data.{s}_file={d}/{s}.jsonl" for s in ("train", "dev", "test")]
        subprocess.run([sys.executable, "-m", "benchmarks.embedded.benchmark", "--data.benchmark_questions", "100", *args],
                       check=True, capture_output=True)
        outs.append(b"".join((d / f"{s}.jsonl").read_bytes() for s in ("train", "dev", "test")))
    assert outs[0] == outs[1]
    recs = load_records(str(tmp_path / "0" / "dev.jsonl"))
    assert len(recs) == 15 and all(r.ctxs and r.answers for r in recs)


def test_contents_and_ranking():
    splits = build_benchmark(0, 400)
    for r in splits["dev"]:
        kinds = [p.role for p in r.ctxs]
        assert kinds.count("gold") == 1 and {"same_relation", "same_entity", "near_duplicate", "random"} <= set(kinds)
        scores = [p.score for p in r.ctxs]
        assert scores == sorted(scores, reverse=True)
        assert r.counterfactual_ctxs[0].text.split()[:2] == r.question.split()[:2]
        assert r.counterfactual_ctxs[0].text.split()[2] != r.answers[0]
        assert r.evidence == f"{r.question[:-2]} {r.answers[0]} ."
    assert {r.meta["kind"] for r in splits["test"]} == {"world", "fresh"}


def test_no_test_instance_in_training():
    splits = build_benchmark(0, 2000)
    train_world = {(r.meta["entity"], r.meta["relation"]) for r in splits["train"] if r.meta["kind"] == "world"}
    test_world = {(r.meta["entity"], r.meta["relation"]) for r in splits["test"] if r.meta["kind"] == "world"}
    assert not train_world & test_world
    key = lambda r: (r.question, r.answers[0])
    train_fresh = {key(r) for r in splits["train"] if r.meta["kind"] == "fresh"}
    assert not train_fresh & {key(r) for r in splits["test"] if r.meta["kind"] == "fresh"}
