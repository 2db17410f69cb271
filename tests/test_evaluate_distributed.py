"""Evaluation over 2 real ranks (``torchrun --nproc_per_node 2`` on CPU/gloo; the deepspeed launcher works the
same but starts ~30 s slower on this machine) equals the 1-rank evaluation exactly:
the same raw outputs, answers and scores for every question and setting, the same metrics and intervals."""
import json
import os
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "dist_scripts"))
import eval_setup  # noqa: E402

from rag import evaluate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_SPECIFIC = ("name", "world_size")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_ranks_equal_one_rank(tmp_path):
    model = eval_setup.make_checkpoint(str(tmp_path / "model"))
    test_file = eval_setup.make_records(str(tmp_path / "test.jsonl"))
    # batch 4 over 9 questions x 5 settings = 12 batches: ranks get interleaved, length-sorted batches
    config = eval_setup.write_config(str(tmp_path), test_file, model, batch_size=4, max_new_tokens=6)
    one = evaluate.main(["--config", config, "--name", "one_rank", "--no-progress"])

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           os.path.join(ROOT, "tests", "dist_scripts", "eval_two_ranks.py"),
           "--config", config, "--name", "two_ranks", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "EVAL_TWO_RANKS_OK world_size=2" in proc.stdout

    out = tmp_path / "run" / "eval"
    two = json.loads((out / "two_ranks.eval.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    strip = lambda r: {k: v for k, v in r.items() if k not in RUN_SPECIFIC}  # noqa: E731
    assert strip(two) == strip(json.loads(json.dumps(one)))
    assert (out / "two_ranks.predictions.jsonl").read_text() == (out / "one_rank.predictions.jsonl").read_text()
