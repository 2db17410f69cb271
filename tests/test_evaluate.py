"""Evaluation on one process: answer extraction, batched greedy generation, the entry point's outputs, hard
deactivation from a neuron map, and the combined report (results.json shape read back)."""
import json
import os

import pytest
import torch

from neurorit.run_layout import eval_files
from rag import evaluate, report
from rag.evaluate import extract_answer
from rag.generate import balanced_shares, greedy_generate, length_batches
from tests.support.workspaces import (eval_checkpoint, eval_config, eval_model, eval_records, eval_tokenizer,
                                      unnamed_files)

SETTINGS = ["gold", "top5", "noise_only", "counterfactual", "closed_book"]
STAT_KEYS = {"match", "em", "f1", "match_ci95"}


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    model = eval_checkpoint(str(d / "model"))
    test_file = eval_records(str(d / "test.jsonl"))
    config = eval_config(str(d), test_file, model)
    return {"dir": d, "model": model, "config": config}


@pytest.fixture(scope="module")
def base_result(fixture_dir):
    return evaluate.main(["--config", fixture_dir["config"], "--name", "base", "--no-progress",
                          "--trainable-params", "0"])


# ------------------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize("output, instruction, marker, want", [
    ("kolim color red . answer : red", "two_step", "answer :", "red"),
    ("evidence words ANSWER: Red Square", "two_step", "answer :", "Red Square"),
    ("Evidence: Paris is the capital.\nAnswer: Paris\nmore text", "two_step", "Answer:", "Paris"),
    ("Evidence: nothing useful\nParis", "two_step", "Answer:", "Paris"),
    ("kolim color red .", "two_step", "answer :", "kolim color red ."),
    ("answer :", "two_step", "answer :", ""),
    ("", "two_step", "answer :", ""),
    ("  red  ", "answer_only", "answer :", "red"),
    ("answer : red", "answer_only", "answer :", "answer : red"),
])
def test_extract_answer(output, instruction, marker, want):
    assert extract_answer(output, instruction, marker) == want


# ------------------------------------------------------------------------------------------ generation
def _reference_greedy(model, prompt, max_new, eos):
    """No cache, no padding: the full sequence every step."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            tok = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if tok == eos:
                break
            out.append(tok)
            ids.append(tok)
    return out


def test_batched_left_padded_generation_matches_one_by_one():
    tok = eval_tokenizer()
    model = eval_model(tok, seed=1)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, len(tok), (n,), generator=gen).tolist() for n in (3, 9, 5, 12, 1)]
    eos = tok.eos_token_id
    batched = greedy_generate(model, prompts, 7, [eos], tok.pad_token_id)
    single = [greedy_generate(model, [p], 7, [eos], tok.pad_token_id)[0] for p in prompts]
    reference = [_reference_greedy(model, p, 7, eos) for p in prompts]
    assert batched == single == reference
    assert all(len(o) <= 7 and eos not in o for o in batched)
    assert len({len(o) for o in batched}) > 1 or all(len(o) == 7 for o in batched)
    assert greedy_generate(model, prompts, 0, [eos], 0) == [[] for _ in prompts]


def test_batches_do_not_depend_on_ranks():
    prompts = [[1] * n for n in (3, 5, 5, 2, 8, 1, 5)]
    batches = length_batches(prompts, 3)
    assert batches == [[4, 1, 2], [6, 0, 3], [5]]
    assert sorted(i for b in batches for i in b) == list(range(len(prompts)))


def test_shares_cover_every_batch_once_and_balance_the_cost():
    # the length-sorted batches of 2 ranks: round-robin gives rank 0 the longer of every pair (cost 3 x (9 + 4) +
    # 3 x (7 + 4) + 1 x (2 + 4) = 78 against 3 x (8 + 4) + 3 x (3 + 4) = 57); the shares balance it (66 / 69)
    prompts = [[1] * n for n in (9, 8, 8, 7, 7, 7, 3, 3, 3, 3, 9, 8, 2)]
    batches = length_batches(prompts, 3)
    shares = balanced_shares(batches, prompts, 4, 2)
    assert shares == [[0, 3, 4], [1, 2]]
    cost = [len(b) * (max(len(prompts[i]) for i in b) + 4) for b in batches]
    assert [sum(cost[b] for b in s) for s in shares] == [66, 69]
    assert sorted(b for s in shares for b in s) == list(range(len(batches)))
    assert balanced_shares(batches, prompts, 4, 1) == [[0, 1, 2, 3, 4]]
    assert balanced_shares(batches, prompts, 4, 8)[5:] == [[], [], []]


# ----------------------------------------------------------------------------------------- entry point
def test_entry_writes_results_per_setting_and_kind(fixture_dir, base_result):
    out = fixture_dir["dir"] / "run" / "eval"
    saved = json.loads((out / "base.eval.json").read_text())
    assert saved == json.loads(json.dumps(base_result))
    assert list(saved["settings"]) == SETTINGS
    assert set(saved["by_kind"]) == {"world", "fresh"}
    for block in [saved["settings"], *saved["by_kind"].values()]:
        for stats in block.values():
            assert STAT_KEYS <= set(stats)
            lo, hi = stats["match_ci95"]
            assert 0.0 <= lo <= stats["match"] <= hi <= 1.0
    n = saved["settings"]["gold"]["n"]
    assert n == saved["num_questions"] == saved["by_kind"]["world"]["gold"]["n"] + saved["by_kind"]["fresh"]["gold"]["n"]
    preds = [json.loads(line) for line in (out / "base.predictions.jsonl").read_text().splitlines()]
    assert len(preds) == n * len(SETTINGS)
    assert {p["setting"] for p in preds} == set(SETTINGS)
    assert any(p["output"] for p in preds) and any(not p["output"] for p in preds)  # ragged EOS stops
    assert (out / "base.config.yaml").is_file()
    files = eval_files(str(out), "base")
    tb = files.tensorboard("two_step")
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tb))
    named = {files.result, files.predictions, files.config, os.path.dirname(tb)}
    assert unnamed_files(str(out), named) == []  # every file of the evaluation is the run layout's


def test_answer_only_prompts(fixture_dir):
    from neurorit.prompts import PromptBuilder
    from neurorit.records import load_records

    tok = eval_tokenizer()
    recs = load_records(str(fixture_dir["dir"] / "test.jsonl"), 2)
    jobs, prompts, _ = evaluate.build_jobs(recs, ["gold", "closed_book"], PromptBuilder("compact"), tok,
                                           "answer_only", 5, 128)
    assert [j["setting"] for j in jobs] == ["gold", "gold", "closed_book", "closed_book"]
    text = tok.decode(prompts[0])
    assert text.split()[1] == "qa" and text.endswith("answer :")
    assert "doc" not in tok.decode(prompts[2])


def test_bad_name_is_a_user_error(fixture_dir):
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--config", fixture_dir["config"], "--name", "a/b"])
    assert exc.value.code == 2


# ---------------------------------------------------------------------------------------------- report
def test_report_writes_the_results_shape(tmp_path):
    def stats(m):
        return {"match": m, "em": m / 2, "f1": m, "match_ci95": [m - 0.1, m + 0.1], "n": 10}

    ev_dir = tmp_path / "eval"
    ev_dir.mkdir()
    for name, params, m in (("neurorit", 4096, 0.6), ("base", 0, 0.4), ("extra_method", 7, 0.5)):
        block = {s: stats(m) for s in SETTINGS}
        ev = {"name": name, "trainable_params": params, "settings": block,
              "by_kind": {"fresh": block, "world": block}}
        (ev_dir / f"{name}.eval.json").write_text(json.dumps(ev))
    paths = report.main(["--eval-dir", str(ev_dir), "--out", str(tmp_path), "--trainable-params", "base=1"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"methods"}
    assert list(results["methods"]) == ["base", "neurorit", "extra_method"]
    for name, method in results["methods"].items():
        assert set(method) == {"trainable_params", "settings", "by_kind"}
        assert isinstance(method["trainable_params"], int)
        assert list(method["settings"]) == SETTINGS
        assert list(method["by_kind"]) == ["fresh", "world"]  # the kinds in the order the evaluations hold them
        for block in [method["settings"], *method["by_kind"].values()]:
            for st in block.values():
                assert set(st) == STAT_KEYS and len(st["match_ci95"]) == 2
    assert results["methods"]["base"]["trainable_params"] == 1
    assert results["methods"]["neurorit"]["settings"]["top5"]["match"] == 0.6
    md = (tmp_path / "results.md").read_text()
    assert "| `neurorit` | 4,096 | 60.0 [50.0, 70.0]" in md and "World-fact" in md and "Fresh-fact" in md
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert paths["json"] == str(tmp_path / "results.json")


def test_report_without_evaluations_is_a_user_error(tmp_path):
    with pytest.raises(SystemExit):
        report.main(["--eval-dir", str(tmp_path), "--out", str(tmp_path)])


def test_too_long_for_the_model_is_a_user_error(fixture_dir):
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--config", fixture_dir["config"], "--name", "long", "--eval.max_new_tokens", "600"])
    assert exc.value.code == 2


def test_real_data_shaped_records(fixture_dir, tmp_path):
    """DPR-style records (no kinds, no counterfactual passages), paper prompts: the settings they allow only."""
    rows = [{"question": f"who wrote book {i}?", "answers": ["Ann Lee", "A. Lee"],
             "ctxs": [{"title": "Book", "text": f"Book {i} was written by Ann Lee.", "score": 2.0},
                      {"title": "Other", "text": "Something unrelated.", "score": 1.0}]} for i in range(3)]
    path = tmp_path / "dpr.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate.main(["--config", fixture_dir["config"], "--name", "dpr", "--no-progress",
                            "--data.test_file", str(path), "--data.prompt_style", "paper",
                            "--runtime.output_dir", str(tmp_path / "run")])
    assert list(result["settings"]) == ["gold", "top5", "noise_only", "closed_book"]
    assert result["by_kind"] == {} and result["settings"]["gold"]["n"] == 3
    paths = report.main(["--eval-dir", str(tmp_path / "run" / "eval"), "--out", str(tmp_path)])
    results = json.loads(open(paths["json"]).read())
    assert results["methods"]["dpr"]["by_kind"] == {} and "World-fact" not in open(paths["md"]).read()
