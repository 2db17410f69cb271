"""Prompt builders: every kind renders; truncation cuts documents only, never the question or the target."""
import pytest

from neurorit.prompts import PromptBuilder, TruncationCounter, encode
from neurorit.records import Passage
from benchmarks.embedded.tokenizer import build_tokenizer
from benchmarks.embedded.world import World

TOK = build_tokenizer(World(0))
NAMES = World(0).world_entities
DOCS = [Passage(title=n, text=f"{n} color red . {n} city paris .") for n in NAMES[:5]]


def test_kinds_compact():
    b = PromptBuilder("compact")
    q = f"{NAMES[0]} color ?"
    assert b.mining(q, "red", DOCS[0]).text() == f"verify doc : {DOCS[0].text} question : {q} proposed : red reply :"
    assert b.mining(q, "red", None).text() == f"verify doc : question : {q} proposed : red reply :"
    s1 = b.stage1(q, DOCS[:2])
    assert s1.text().startswith("filter doc :") and s1.output == ""
    assert b.stage2(q, DOCS, "").output == "none ."
    assert b.two_step(q, DOCS).text().endswith(f"question : {q} evidence :")
    for parts in (s1, b.stage2(q, DOCS, f"{NAMES[0]} color red ."), b.answer_only(q, DOCS, "red")):
        assert TOK.unk_token_id not in encode(TOK, parts, 512).input_ids


def test_paper_style_has_instructions():
    b = PromptBuilder("paper")
    t = b.two_step("Who?", [Passage(title="T", text="body")]).text()
    assert "Document [1] (Title: T) body" in t and t.endswith("Question: Who?\nEvidence:")
    assert b.yes_word == " YES"


def test_stage1_target_is_eos_only():
    enc = encode(TOK, PromptBuilder("compact").stage1("a color ?", DOCS[:1]), 128)
    assert [t for t in enc.labels if t != -100] == [TOK.eos_token_id]


@pytest.mark.parametrize("max_len", [20, 30, 45])
def test_truncation_keeps_question_and_target(max_len):
    b = PromptBuilder("compact")
    q = f"{NAMES[7]} color ?"
    parts = b.stage2(q, DOCS, f"{NAMES[7]} color red .")
    full = encode(TOK, parts, 10_000)
    enc = encode(TOK, parts, max_len)
    assert len(enc.input_ids) <= max_len and enc.truncated and not full.truncated
    text = TOK.decode(enc.input_ids)
    assert f"question : {q} evidence : {NAMES[7]} color red ." in text
    assert enc.labels[-len(full.labels[full.prompt_len:]):] == full.labels[full.prompt_len:]
    counter = TruncationCounter()
    counter.add(enc, "x")
    counter.add(full, "y")
    assert counter.report("stage2") == "stage2: truncated documents in 1 of 2 examples"


def test_too_long_fixed_part_is_an_error():
    with pytest.raises(ValueError, match="max_length 5"):
        encode(TOK, PromptBuilder("compact").stage2("a color ?", DOCS, "b color red ."), 5)


def test_compact_baseline_differs_by_the_passage_tokens_only():
    """The IG baseline is the attributed prompt minus the passage (issue 19): with the embedded word-level
    tokenizer, removing the passage's tokens from the attributed prompt gives the baseline exactly."""
    b = PromptBuilder("compact")
    q = f"{NAMES[0]} color ?"
    full = encode(TOK, b.mining(q, "red", DOCS[0]), 512, with_output=False, add_eos=False).input_ids
    base = encode(TOK, b.mining(q, "red", None), 512, with_output=False, add_eos=False).input_ids
    passage = TOK(" " + DOCS[0].text, add_special_tokens=False)["input_ids"]
    cut = len(TOK("verify doc :", add_special_tokens=False)["input_ids"]) + 1  # + BOS
    assert full[:cut] + full[cut + len(passage):] == base and full[cut:cut + len(passage)] == passage
    assert TOK.unk_token_id not in base
