"""Evaluation over 2 real ranks (``torchrun --nproc_per_node 2`` on CPU/gloo; the deepspeed launcher works the
same but starts ~30 s slower on this machine) equals the 1-rank evaluation exactly:
the same raw outputs, answers and scores for every question and setting, the same metrics and intervals."""
import json

import pytest

from rag import evaluate
from tests.support.workspaces import eval_checkpoint, eval_config, eval_records

RUN_SPECIFIC = ("name", "world_size")


@pytest.mark.distributed
def test_two_ranks_equal_one_rank(tmp_path, run_ranks):
    model = eval_checkpoint(str(tmp_path / "model"))
    test_file = eval_records(str(tmp_path / "test.jsonl"))
    # batch 4 over 9 questions x 5 settings = 12 batches: ranks get interleaved, length-sorted batches
    config = eval_config(str(tmp_path), test_file, model, batch_size=4, max_new_tokens=6)
    one = evaluate.main(["--config", config, "--name", "one_rank", "--no-progress"])

    proc = run_ranks("tests/dist_scripts/eval_two_ranks.py", "--config", config, "--name", "two_ranks",
                     "--no-progress", launcher="torchrun")  # asserts exit 0
    assert "EVAL_TWO_RANKS_OK world_size=2" in proc.stdout

    out = tmp_path / "run" / "eval"
    two = json.loads((out / "two_ranks.eval.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    strip = lambda r: {k: v for k, v in r.items() if k not in RUN_SPECIFIC}  # noqa: E731
    assert strip(two) == strip(json.loads(json.dumps(one)))
    assert (out / "two_ranks.predictions.jsonl").read_text() == (out / "one_rank.predictions.jsonl").read_text()
