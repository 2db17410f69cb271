"""Resumable evaluation (issue 15): kill -9 at a random point, re-run the same command, and the predictions file is
byte-identical to an uninterrupted run's; a killed run leaves no ``<name>.eval.json`` (the demo's done marker) and
no predictions file, only finished batches. On 1 rank (``python rag/evaluate.py``) and on 2 real ranks (torchrun),
plus the folder rules: another run's batches are never mixed in, a cut temp file is ignored, ``eval.resume false``
starts over."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from rag import evaluate
from tests.support import ranks
from tests.support.workspaces import eval_checkpoint, eval_config, eval_records

RUN_SPECIFIC = ("name", "world_size")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    model = eval_checkpoint(str(d / "model"))
    test_file = eval_records(str(d / "test.jsonl"), n_questions=200)
    # batch 1: one batch per prompt, so a kill lands between many small atomic writes
    config = eval_config(str(d), test_file, model, batch_size=1, max_new_tokens=6)
    ref = evaluate.main(["--config", config, "--name", "reference", "--no-progress"])
    out = d / "run" / "eval"
    return {"dir": d, "config": config, "out": out, "ref": ref,
            "ref_lines": (out / "reference.predictions.jsonl").read_bytes()}


def _shards(folder) -> int:
    try:
        return sum(1 for n in os.listdir(folder) if n.startswith("batch-") and n.endswith(".json"))
    except FileNotFoundError:
        return 0


def _kill_at_random_point(cmd: list[str], partial, n_batches: int, seed: int) -> int:
    """Start ``cmd`` in its own process group; SIGKILL the whole group once a random number of batches is on
    disk. Returns how many were there at the kill."""
    want = random.Random(seed).randint(1, n_batches // 2)
    proc = subprocess.Popen(cmd, cwd=ranks.ROOT, env=ranks.child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 400
    try:
        while _shards(partial) < want:
            assert proc.poll() is None, f"finished before the kill ({want} batches wanted): {proc.stderr.read()[-2000:]}"
            assert time.time() < deadline, "no batches written in time"
            time.sleep(0.01)
    finally:
        _kill_tree(proc)
    return _shards(partial)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts each rank in a session of its own, so
    killing the launcher's group alone would leave the ranks running)."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for p in [psutil.Process(proc.pid)] + tree if proc.poll() is None else tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(tree, timeout=30)


def _check_killed(out, name: str, n_batches: int, at_kill: int) -> None:
    assert not (out / f"{name}.eval.json").exists()
    assert not (out / f"{name}.predictions.jsonl").exists()
    assert 1 <= at_kill < n_batches


def _check_same_as_reference(ws, name: str, result: dict) -> None:
    out = ws["out"]
    assert (out / f"{name}.predictions.jsonl").read_bytes() == ws["ref_lines"]
    strip = lambda r: {k: v for k, v in r.items() if k not in RUN_SPECIFIC}  # noqa: E731
    assert strip(result) == strip(json.loads(json.dumps(ws["ref"])))
    assert not (out / f"{name}.partial").exists()


def _n_batches(ws) -> int:
    return len(ws["ref_lines"].splitlines())  # batch size 1


@pytest.mark.slow  # a kill / resume / clean-exit check of real ranks: make test-faults (in .ci/run)
@pytest.mark.distributed
def test_kill_on_one_rank_then_rerun_gives_the_same_predictions(workspace):
    ws, name = workspace, "killed_one"
    n = _n_batches(ws)
    args = ["--config", ws["config"], "--name", name, "--no-progress"]
    at_kill = _kill_at_random_point([sys.executable, "rag/evaluate.py", *args], ws["out"] / f"{name}.partial", n,
                                    seed=int(time.time()))
    _check_killed(ws["out"], name, n, at_kill)
    proc = subprocess.run([sys.executable, "rag/evaluate.py", *args], cwd=ranks.ROOT, env=ranks.child_env(),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming:" in proc.stderr
    _check_same_as_reference(ws, name, json.loads((ws["out"] / f"{name}.eval.json").read_text()))


@pytest.mark.slow  # a kill / resume / clean-exit check of real ranks: make test-faults (in .ci/run)
@pytest.mark.distributed
def test_kill_on_two_ranks_then_rerun_gives_the_same_predictions(workspace, run_ranks):
    ws, name = workspace, "killed_two"
    n = _n_batches(ws)
    args = ["--config", ws["config"], "--name", name, "--no-progress"]
    cmd = ranks.launch_command("rag/evaluate.py", args, n=2, launcher="torchrun")
    at_kill = _kill_at_random_point(cmd, ws["out"] / f"{name}.partial", n, seed=int(time.time()) + 1)
    _check_killed(ws["out"], name, n, at_kill)
    proc = run_ranks("rag/evaluate.py", *args, launcher="torchrun")
    assert "resuming:" in proc.stderr
    result = json.loads((ws["out"] / f"{name}.eval.json").read_text())
    assert result["world_size"] == 2
    _check_same_as_reference(ws, name, result)


def test_batches_of_another_run_are_never_mixed_in(workspace):
    ws, name = workspace, "stale"
    partial = ws["out"] / f"{name}.partial"
    partial.mkdir(parents=True)
    (partial / "meta.json").write_text(json.dumps({"fingerprint": "another run"}))
    (partial / "batch-00000.json").write_text(json.dumps({"fingerprint": "another run", "batch": 0,
                                                          "outputs": [[0, [5, 5, 5]]]}))
    (partial / "batch-00001.json.tmp.123").write_text('{"cut mid-wri')
    (ws["out"] / f"{name}.eval.json").write_text("{}")  # a stale done marker goes first
    result = evaluate.main(["--config", ws["config"], "--name", name, "--no-progress"])
    _check_same_as_reference(ws, name, result)


def test_finished_batches_are_read_back_and_resume_false_starts_over(workspace):
    """A folder of this run's fingerprint is really used: one batch forged to other tokens shows up in the
    predictions; with ``eval.resume false`` it is ignored."""
    from model_patches import load_tokenizer
    from neurorit.config import load_config
    from neurorit.records import load_records
    from rag.resume import BatchStore

    ws = workspace
    cfg = load_config(ws["config"])
    partial = ws["out"] / "forged.partial"
    records = load_records(cfg.data.test_file, cfg.eval.num_examples)
    evaluate.evaluate_model(evaluate.load_model(cfg.model.path, cfg), load_tokenizer(cfg.model.path), records, cfg,
                            show_progress=False, store=str(partial), model_path=cfg.model.path)
    assert _shards(partial) == _n_batches(ws)  # evaluate_model keeps the folder; the entry removes it at the end

    def forge() -> int:
        fp = json.loads((partial / "meta.json").read_text())["fingerprint"]
        (index, _), = json.loads((partial / "batch-00000.json").read_text())["outputs"]
        BatchStore(str(partial), fp).put(0, {index: [40, 41, 42]})
        return index

    index = forge()
    evaluate.main(["--config", ws["config"], "--no-progress", "--name", "forged"])
    got = (ws["out"] / "forged.predictions.jsonl").read_text().splitlines()
    want = ws["ref_lines"].decode().splitlines()
    assert [i for i, (a, b) in enumerate(zip(got, want)) if a != b] == [index]
    assert json.loads(got[index])["output"] == evaluate.load_tokenizer(cfg.model.path).decode([40, 41, 42])

    evaluate.evaluate_model(evaluate.load_model(cfg.model.path, cfg), load_tokenizer(cfg.model.path), records, cfg,
                            show_progress=False, store=str(partial), model_path=cfg.model.path)
    forge()
    evaluate.main(["--config", ws["config"], "--no-progress", "--name", "forged", "--eval.resume", "false"])
    assert (ws["out"] / "forged.predictions.jsonl").read_bytes() == ws["ref_lines"]
