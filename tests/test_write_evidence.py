"""Teacher-written evidence (``rag/write_evidence.py``, issue 13 item 3) with the embedded model as the teacher on a
handful of embedded benchmark records (compact prompts, ``configs/embedded.yaml``):

- the teacher's summaries go through stage 2 end to end: stage 2's training targets are exactly the teacher's
  text (``train.data.build_examples`` on the written file), Neuro-RIT's stage 2 trains on that file and exports;
- records that already have evidence are written back byte for byte, a re-run on a filled file calls no teacher;
- an interrupted run, re-run with the same command, generates only the batches it had not finished and writes
  the same file, byte for byte, as an uninterrupted run;
- the zero3 backend on 2 ranks (torchrun) writes the same evidence as hf on 1;
- each summary records its teacher (path, fingerprint) and the generation settings; missing teacher or input is
  one line, exit 2; the output rules (no-evidence sentence, token limit, answer marker).
"""
import json
import os

import pytest
import torch

from model_patches import load_causal_lm, load_tokenizer, model_fingerprint
from neurorit.config import load_config
from neurorit.neuron_map import NeuronMap
from neurorit.prompts import PromptBuilder, encode, prompt_builder
from neurorit.records import Passage, load_records, passage_has_answer, write_records
from rag import write_evidence as we
from rag.generate import eos_ids_of, generate_all, pad_id_of
from tests.support.ranks import ROOT, run_ranks
from train.data import ExampleFormat, build_examples, evidence_for
from train.loop import run_stage

TEACHER = os.path.join(ROOT, "assets", "base-model")
CONFIG = os.path.join(ROOT, "configs", "embedded.yaml")
NUM_DOCS, MAX_NEW, BATCH = 5, 24, 2
KEEP = (0, 4, 7)  # records that keep their benchmark evidence; the others lose it and get the teacher's
NOISE = 5  # a record whose shown documents hold no gold answer


def _records(n: int = 10):
    from benchmarks.embedded.benchmark import build_benchmark

    records = build_benchmark(seed=0, n_questions=40)["train"][:n]
    for i, rec in enumerate(records):
        if i not in KEEP:
            rec.evidence = ""
    noisy = records[NOISE]
    noisy.ctxs = [p for p in noisy.ctxs if not passage_has_answer(p, noisy.answers)]
    return records


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("evidence")
    path = str(d / "train.jsonl")
    write_records(_records(), path)
    return {"dir": d, "in": path, "lines": open(path, encoding="utf-8").read().splitlines()}


def _argv(in_path: str, out_path: str, *extra: str) -> list[str]:
    return ["--config", CONFIG, "--teacher", TEACHER, "--in", in_path, "--out", out_path, "--no-progress",
            "--evidence.batch_size", str(BATCH), "--evidence.max_new_tokens", str(MAX_NEW),
            "--runtime.output_dir", os.path.dirname(out_path), *extra]


def _teacher_texts(records) -> dict:
    """What the teacher writes for each record without evidence, computed here independently: the teacher task's
    prompts in the same length-sorted batches, greedy decoding, the same clean-up."""
    tok = load_tokenizer(TEACHER)
    model = load_causal_lm(TEACHER, dtype="float32", attn_implementation="auto")
    builder = PromptBuilder("compact")
    ask = [r for r in records if not r.evidence]
    prompts = [encode(tok, builder.teacher(r.question, we.shown_docs(r, NUM_DOCS)), 256, with_output=False).input_ids
               for r in ask]
    eos = eos_ids_of(model, tok, builder.stop_ids)
    out = generate_all(model, prompts, MAX_NEW, BATCH, eos, pad_id_of(tok, eos))
    return {r.id: we.clean_summary(tok.decode(out[i], skip_special_tokens=True), builder,
                                   len(out[i]) >= MAX_NEW)[0] for i, r in enumerate(ask)}


def _embedded_neuron_map(out_dir: str) -> None:
    """A neuron map for the embedded model (4 layers, FFN 512): a few neurons per group, the last layer as target."""
    model = load_causal_lm(TEACHER, dtype="float32", attn_implementation="auto")
    rows = {"relevant_only": [(0, 3), (1, 40), (2, 5)], "irrelevant_only": [(0, 7), (2, 9), (3, 11)],
            "shared": [(1, 100), (3, 64)]}
    groups = {g: torch.tensor([[layer, n, 1, 1] for layer, n in r], dtype=torch.long) for g, r in rows.items()}
    NeuronMap(groups=groups, target_layers=[3], fingerprint=model_fingerprint(model)).save(
        os.path.join(out_dir, "mining"))


def test_teacher_evidence_goes_through_stage2(data, tmp_path, single_rank_env):
    out = str(tmp_path / "train.evidence.jsonl")
    summary = we.main(_argv(data["in"], out))
    originals = load_records(data["in"])
    assert summary["kept"] == len(KEEP) and summary["teacher"] == len(originals) - len(KEEP)

    # kept records: their own lines, byte for byte; the others: the teacher's text and who wrote it
    lines = open(out, encoding="utf-8").read().splitlines()
    assert len(lines) == len(data["lines"])
    for i in KEEP:
        assert lines[i] == data["lines"][i]
    expected = _teacher_texts(originals)
    written = load_records(out)
    fp = we.teacher_fingerprint(TEACHER)
    for rec in written:
        if rec.id in expected:
            assert rec.evidence == expected[rec.id]
            by = rec.meta["evidence_by"]
            assert by["teacher"] == os.path.abspath(TEACHER) and by["fingerprint"] == fp
            assert (by["backend"], by["max_new_tokens"], by["decoding"], by["prompt_style"], by["num_docs"]) == \
                ("hf", MAX_NEW, "greedy", "compact", NUM_DOCS)
            assert rec.meta["kind"] in ("world", "fresh")  # the record's own meta is kept
        else:
            assert "evidence_by" not in rec.meta and rec.evidence
    # the teacher's own words, not the answer-sentence fallback stage 2 would have used without them
    builder = PromptBuilder("compact")
    assert any(expected[r.id] != evidence_for(r, we.shown_docs(r, NUM_DOCS), builder)
               for r in originals if r.id in expected)

    # stage 2's training targets are exactly the evidence in the file (the teacher's for the filled records)
    cfg = load_config(CONFIG, ["--data.train_file", out, "--runtime.output_dir", str(tmp_path / "run"),
                               "--stage2.init_from", TEACHER, "--stage2.max_steps", "2", "--stage2.batch_size", "4",
                               "--stage2.micro_batch_size", "2", "--stage2.num_docs", str(NUM_DOCS),
                               "--stage2.warmup_ratio", "0"])
    tok = load_tokenizer(TEACHER)
    examples, _ = build_examples("evidence", written, ExampleFormat(tok, prompt_builder(cfg.data, tok), NUM_DOCS,
                                                                    cfg.data.max_length, cfg.runtime.seed))
    for rec, ex in zip(written, examples):
        target = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != -100]
        assert target[-1] == tok.eos_token_id
        assert tok.decode(target[:-1], skip_special_tokens=True) == expected.get(rec.id, rec.evidence)

    # Neuro-RIT's stage 2 on the teacher-written file, end to end
    _embedded_neuron_map(cfg.runtime.output_dir)
    result = run_stage("stage2", cfg)
    assert result["finished"] and result["step"] == 2 and result["final_loss"] is not None
    export = result["export_dir"]
    assert os.path.isfile(os.path.join(export, "config.json"))
    assert any(n.endswith(".safetensors") for n in os.listdir(export))
    saved = load_config(os.path.join(tmp_path / "run" / "stage2", "config.yaml"))
    assert saved.data.train_file == out


def test_interrupted_run_resumes_to_the_same_file(data, tmp_path, monkeypatch):
    ref = str(tmp_path / "ref" / "out.jsonl")
    we.main(_argv(data["in"], ref))
    reference = open(ref, "rb").read()

    out = str(tmp_path / "cut" / "out.jsonl")
    real_load = we.load_backend
    generated = []

    def counting(stop_after: int):
        def load(*args, **kwargs):
            backend = real_load(*args, **kwargs)
            real = backend.generate

            def generate(prompts, batches, todo, decoding, on_batch):
                def report(b, outputs):
                    on_batch(b, outputs)
                    generated.append(b)
                    if len(generated) == stop_after:
                        raise KeyboardInterrupt("simulated kill")
                real(prompts, batches, todo, decoding, report)
            backend.generate = generate
            return backend
        return load

    monkeypatch.setattr(we, "load_backend", counting(stop_after=2))
    with pytest.raises(KeyboardInterrupt):
        we.main(_argv(data["in"], out))
    partial = out + ".partial"
    assert not os.path.exists(out)
    assert sorted(n for n in os.listdir(partial) if n.startswith("batch-")) == [
        f"batch-{b:05d}.json" for b in sorted(generated)]
    first = list(generated)

    generated.clear()
    monkeypatch.setattr(we, "load_backend", counting(stop_after=-1))
    summary = we.main(_argv(data["in"], out))
    n_batches = -(-summary["teacher"] // BATCH)
    assert sorted(first + generated) == list(range(n_batches))  # only what the first run had not finished
    assert open(out, "rb").read() == reference
    assert not os.path.exists(partial)

    # evidence.resume false: starts over, same file
    generated.clear()
    we.main(_argv(data["in"], out, "--evidence.resume", "false"))
    assert sorted(generated) == list(range(n_batches)) and open(out, "rb").read() == reference


def test_zero3_teacher_on_two_ranks_writes_the_same_evidence(data, tmp_path):
    """The zero3 backend (the teacher partitioned over 2 ranks, torchrun) writes what the hf backend writes on 1."""
    ref, out = str(tmp_path / "hf" / "out.jsonl"), str(tmp_path / "z3" / "out.jsonl")
    we.main(_argv(data["in"], ref))
    run_ranks("rag/write_evidence.py", *_argv(data["in"], out, "--eval.backend", "zero3"), launcher="torchrun")
    hf, z3 = load_records(ref), load_records(out)
    assert [r.evidence for r in z3] == [r.evidence for r in hf]
    assert {r.meta["evidence_by"]["backend"] for r in z3 if "evidence_by" in r.meta} == {"zero3"}


def test_filled_file_is_kept_and_fixed_rule(data, tmp_path, monkeypatch):
    first = str(tmp_path / "a.jsonl")
    we.main(_argv(data["in"], first, "--evidence.no_answer_docs", "fixed"))
    rows = {r.id: r for r in load_records(first)}
    noisy = rows[load_records(data["in"])[NOISE].id]
    assert noisy.evidence == PromptBuilder("compact").no_evidence()
    assert noisy.meta["evidence_by"]["teacher"] is None and "rule" in noisy.meta["evidence_by"]

    # every record has evidence now: nothing for a teacher to do (none is loaded), every line kept
    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher was loaded although every record has evidence")

    monkeypatch.setattr(we, "load_backend", no_teacher)
    second = str(tmp_path / "b.jsonl")
    summary = we.main(_argv(first, second))
    assert summary["kept"] == summary["records"] and open(second, "rb").read() == open(first, "rb").read()


def test_missing_teacher_or_input_is_one_line(data, tmp_path, capsys):
    for argv, words in ((_argv(data["in"], str(tmp_path / "o.jsonl"))[:2] + ["--in", data["in"]], "no teacher"),
                        (_argv(data["in"], str(tmp_path / "o.jsonl"), "--teacher", str(tmp_path / "nope")),
                         "teacher model not found"),
                        (_argv(str(tmp_path / "missing.jsonl"), str(tmp_path / "o.jsonl")), "records file not found")):
        with pytest.raises(SystemExit) as exc:
            we.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err


def test_output_rules():
    paper, compact = PromptBuilder("paper"), PromptBuilder("compact")
    for text in ("", "  ", "No relevant information is found in the documents.", "no relevant information here"):
        assert we.clean_summary(text, paper, False) == (paper.no_evidence(), {"no_evidence": True})
    assert we.clean_summary("none .", compact, False)[0] == "none ."
    assert we.clean_summary("Evidence: Paris is in France. Answer: France", paper, False) == \
        ("Paris is in France.", {})
    text, notes = we.clean_summary("Paris is in France. It has the Louvre and", paper, True)
    assert text == "Paris is in France." and notes == {"truncated": True}
    assert we.clean_summary("ann lives rome .", compact, False) == ("ann lives rome .", {})
    # the teacher task: the documents of stage 2, and for the paper style the fixed sentence in the instruction
    parts = paper.teacher("Where?", [Passage("T", "x")])
    assert paper.no_evidence() in parts.head and parts.docs == ["Document [1] (Title: T) x"]
    assert compact.teacher("q", []).text() == compact.stage2("q", [], "e").text()
