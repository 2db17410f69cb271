"""The stage-1 dev probe (rag/stage1_probe.py): evaluation's own prompts, the end token that closes the turn,
shares forced to 1 and 0 by construction, batching that does not change a prompt's answer, and the CLI on the
embedded base model."""
import json
import os

import pytest
import torch

from model_patches import load_causal_lm, load_tokenizer
from neurorit.config import ExperimentConfig
from neurorit.prompts import PromptBuilder, prompt_builder
from neurorit.records import load_records
from rag.evaluate import build_jobs
from rag.stage1_probe import ProbeSpec, end_token_ids, first_token_probs, main, probe_prompts, stage1_probe
from tests.support.workspaces import eval_model, eval_records, eval_tokenizer, write_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "assets", "base-model")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tok = eval_tokenizer()
    path = eval_records(str(tmp_path_factory.mktemp("probe") / "test.jsonl"), n_questions=60)
    return tok, load_records(path)


def _forced(tok, winner: int):
    """A tiny model whose lm_head bias makes ``winner`` the most likely next token after any prompt."""
    model = eval_model(tok)
    bias = torch.zeros(model.config.vocab_size)
    bias[winner] = 1e4
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model.eval()


@pytest.mark.parametrize("instruction", ["two_step", "answer_only"])
def test_prompts_are_evaluations(world, instruction):
    tok, records = world
    builder = PromptBuilder("compact")
    jobs, prompts, _ = build_jobs(records, ["noise_only", "gold"], builder, tok, instruction, 5, 128)
    ours = [p for s in ("noise_only", "gold") for p in probe_prompts(records, s, builder, tok, instruction, 5, 128)[1]]
    assert ours == prompts and len(ours) == 2 * len(records)


def test_forced_end_token_gives_one_and_other_token_gives_zero(world):
    tok, records = world
    builder = PromptBuilder("compact")
    end = end_token_ids(tok, builder)
    assert end == [tok.eos_token_id]  # no chat template: eos_token closes the answer
    hit = stage1_probe(_forced(tok, end[0]), tok, records, builder, ProbeSpec("answer_only", 5, 128, batch_size=7))
    assert hit["noise_only"]["end_share"] == 1.0 and hit["gold"]["end_share"] == 1.0
    assert hit["noise_only"]["n"] == len(records) and hit["noise_only"]["end_prob"] > 0.99
    other = next(i for i in range(tok.vocab_size) if i not in end and i != tok.pad_token_id)
    miss = stage1_probe(_forced(tok, other), tok, records, builder, ProbeSpec("answer_only", 5, 128, batch_size=7))
    assert miss["noise_only"]["end_share"] == 0.0 and miss["gold"]["end_share"] == 0.0
    assert miss["noise_only"]["end_prob"] < 1e-3
    assert hit["noise_only"]["ended"] == {r.id: 1 for r in records}  # per question, for mined-vs-random pairing
    assert miss["gold"]["ended"] == {r.id: 0 for r in records}
    assert set(miss["by_kind"]) == {str(r.meta["kind"]) for r in records}
    assert sum(v["noise_only"]["n"] for v in miss["by_kind"].values()) == len(records)


def test_kinds_filter(world):
    tok, records = world
    kind = str(records[0].meta["kind"])
    res = stage1_probe(eval_model(tok).eval(), tok, records, PromptBuilder("compact"),
                       ProbeSpec("two_step", 5, 128, kinds=(kind,)))
    assert res["gold"]["n"] == sum(str(r.meta["kind"]) == kind for r in records) and list(res["by_kind"]) == [kind]


def test_batching_does_not_change_the_answer():
    tok = load_tokenizer(BASE)
    model = load_causal_lm(BASE, dtype="float32", attn_implementation="eager").eval()
    prompts = [tok("the capital of")["input_ids"], tok("a b c d e f g h")["input_ids"], tok("x")["input_ids"],
               tok("the capital in")["input_ids"]]  # two prompts end at the same column
    one = torch.cat([first_token_probs(model, [p], batch_size=1) for p in prompts])
    batched = first_token_probs(model, prompts, batch_size=4, pad_id=0)
    assert torch.allclose(one, batched, atol=1e-5) and one.shape[0] == 4
    with torch.no_grad():  # the reference: every position's logits, the last one's softmax
        full = torch.stack([torch.softmax(model(input_ids=torch.tensor([p])).logits[0, -1], -1) for p in prompts])
    assert torch.allclose(full, batched, atol=1e-5)


def test_cli_on_the_embedded_base_model(tmp_path):
    records = eval_records(str(tmp_path / "dev.jsonl"), n_questions=60)
    cfg = write_yaml(str(tmp_path / "c.yaml"), {
        "model": {"path": BASE, "attn_implementation": "eager"},
        "data": {"dev_file": records, "prompt_style": "compact", "num_docs": 5, "max_length": 256},
        "eval": {"batch_size": 8, "instruction": "answer_only"}, "runtime": {"torch_threads": 1}})
    out = str(tmp_path / "probe.json")
    res = main(["--config", cfg, "--model", BASE, "--out", out])
    assert json.load(open(out)) == json.loads(json.dumps(res))
    tok = load_tokenizer(BASE)
    builder = prompt_builder(ExperimentConfig().data, tok)
    assert res["end_ids"] == end_token_ids(tok, builder)
    for s in ("noise_only", "gold"):
        assert res[s]["n"] > 0 and 0.0 <= res[s]["end_share"] <= 1.0 and 0.0 < res[s]["end_prob"] < 1.0
    kinds = {str(r.meta.get("kind")) for r in load_records(records)}
    capped = main(["--config", cfg, "--model", BASE, "--kinds", *kinds, "--max-per-kind", "3"])
    assert {k: v["gold"]["n"] for k, v in capped["by_kind"].items()} == {k: 3 for k in kinds}
