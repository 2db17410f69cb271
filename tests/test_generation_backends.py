"""The generation seam (``eval.backend``): ``zero3`` on 2 real ranks writes the predictions of ``hf`` on 1 rank,
byte for byte (issue 13's done-when, on the embedded model and config), and the lockstep decoding it rests on
(extra forward steps after a batch ended, one-token stand-in batches) never changes a batch's tokens. The ``vllm``
backend is tested in its own environment (``tests/vllm``)."""
import json
import os

import pytest

from neurorit.errors import UserError
from rag import evaluate
from rag.backends import HFBackend, load_backend
from rag.generate import greedy_generate
from tests.support.workspaces import eval_model, eval_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_SPECIFIC = ("name", "world_size")


def test_lockstep_steps_do_not_change_tokens():
    tok = eval_tokenizer()
    model = eval_model(tok, seed=3)
    ids = tok("what is the capital of kolim ?", add_special_tokens=False)["input_ids"]
    prompts = [ids, ids[:3], ids[2:], ids[:1]]
    eos = [tok.eos_token_id]
    alone = greedy_generate(model, prompts, 9, eos, tok.pad_token_id)
    assert len({len(r) for r in alone}) > 1, "want ragged stops"
    calls = []

    def other_rank_still_busy(local_done: bool) -> bool:  # the other rank finishes 5 steps after this one
        calls.append(local_done)
        return sum(calls) > 5

    assert greedy_generate(model, prompts, 9, eos, tok.pad_token_id, all_done=other_rank_still_busy) == alone
    # a stand-in batch (a rank out of batches) steps until told to stop, and its tokens are never used
    steps = []
    greedy_generate(model, [[tok.pad_token_id]], 9, eos, tok.pad_token_id,
                    all_done=lambda d: steps.append(d) or len(steps) == 4)
    assert len(steps) == 4


def test_backend_choice_is_checked(tmp_path):
    from neurorit.config import load_config

    with pytest.raises(UserError, match="eval.backend"):
        load_config(None, ["--eval.backend", "tgi"])
    with pytest.raises(UserError, match="eval.tensor_parallel_size"):
        load_config(None, ["--eval.tensor_parallel_size", "0"])
    cfg = load_config(None, ["--eval.backend", "hf"])
    assert isinstance(load_backend("hf", os.path.join(ROOT, "assets", "base-model"), cfg), HFBackend)


@pytest.mark.distributed
def test_zero3_on_two_ranks_writes_the_predictions_of_hf_on_one(tmp_path, run_ranks):
    from benchmarks.embedded.benchmark import build_benchmark
    from neurorit.records import write_records

    test_file = str(tmp_path / "test.jsonl")
    write_records(build_benchmark(seed=0, n_questions=200)["test"][:16], test_file)
    common = ["--config", os.path.join(ROOT, "configs", "embedded.yaml"), "--data.test_file", test_file,
              "--runtime.output_dir", str(tmp_path / "run"), "--eval.batch_size", "9", "--eval.bootstrap", "100",
              "--runtime.torch_threads", "1", "--no-progress"]
    one = evaluate.main(common + ["--eval.backend", "hf", "--name", "hf_one_rank"])
    # 16 questions x 5 settings = 80 prompts in 9 batches of 9: rank 0 decodes 5, rank 1 decodes 4 and a stand-in
    proc = run_ranks("rag/evaluate.py", *common, "--eval.backend", "zero3", "--name", "zero3_two_ranks")
    assert "generation (zero3, rank 1)" in proc.stderr + proc.stdout  # rank 1 really decoded

    out = tmp_path / "run" / "eval"
    two = json.loads((out / "zero3_two_ranks.eval.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    strip = lambda r: {k: v for k, v in r.items() if k not in RUN_SPECIFIC}  # noqa: E731
    assert strip(two) == strip(json.loads(json.dumps(one)))
    hf_lines = (out / "hf_one_rank.predictions.jsonl").read_bytes()
    assert (out / "zero3_two_ranks.predictions.jsonl").read_bytes() == hf_lines
    assert len(hf_lines.splitlines()) == 80
    assert not (out / "zero3_two_ranks.partial").exists()
