"""Chat templates (data.chat_template): user turn = prompt, assistant turn = target, loss on the assistant turn
only, the end-of-turn token as stage 1's target and as a stop token; refusals; no change without a template.

The tokenizers are built here (byte-level BPE without merges: every byte one token, so any text encodes), with
the SmolLM2 (ChatML) template and a Llama-3-style template whose end-of-turn token differs from eos_token.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from neurorit.errors import UserError
from neurorit.prompts import PromptBuilder, encode, prompt_builder
from neurorit.records import Passage

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
NO_STOP_TEMPLATE = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
TEXT_STOP_TEMPLATE = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + ' END\n' }}{% endfor %}"
                      "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")

Q = "What is the capital of Zorvania?"
DOCS = [Passage("Zorvania", "The capital of Zorvania is Plimford."),
        Passage("Quellmark", "The capital of Quellmark is Dovetown. It lies on a river."),
        Passage("Brisel", "Brisel uses the kronet as its currency.")]


def byte_tokenizer(specials: list[str], eos: str, bos: str | None = None, template: str | None = None):
    """A byte-level BPE tokenizer (no merges) with ``specials`` as special tokens and an optional template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=bos, pad_token=eos,
                                   clean_up_tokenization_spaces=False)
    if template is not None:
        fast.chat_template = template
    return fast


def smollm2_tokenizer(template=SMOLLM2_TEMPLATE):
    return byte_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos="<|im_end|>", bos="<|im_start|>",
                          template=template)


def llama3_tokenizer(template=LLAMA3_TEMPLATE):
    return byte_tokenizer(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>"], eos="<|end_of_text|>", bos="<|begin_of_text|>", template=template)


def data_cfg(mode: str = "auto", style: str = "paper"):
    return SimpleNamespace(prompt_style=style, chat_template=mode)


CASES = {  # tokenizer, end-of-turn token
    "smollm2": (smollm2_tokenizer, "<|im_end|>"),
    "llama3": (llama3_tokenizer, "<|eot_id|>"),
}


def _targets(enc) -> list[int]:
    return [t for t in enc.labels if t != -100]


def _kinds(b: PromptBuilder):
    return {
        "stage1": b.stage1(Q, DOCS[1:]),
        "stage2": b.stage2(Q, DOCS, "The capital of Zorvania is Plimford."),
        "answer_only": b.answer_only(Q, DOCS, "Plimford"),
        "two_step": b.two_step(Q, DOCS),
        "mining": b.mining(Q, "Plimford", DOCS[0]),
        "mining_query": b.mining(Q, "Plimford", None),
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_prompt_is_the_user_turn_target_the_assistant_turn(case):
    make, stop = CASES[case]
    tok = make()
    b = prompt_builder(data_cfg(), tok)
    stop_id = tok.convert_tokens_to_ids(stop)
    assert b.chat is not None and b.chat.stop_id == stop_id and b.stop_ids == [stop_id]
    for kind, parts in _kinds(b).items():
        enc = encode(tok, parts, 4096)
        # the ids are exactly the template's rendering of (user = prompt, assistant = target), cut after the stop
        messages = [{"role": "user", "content": parts.text()}, {"role": "assistant", "content": parts.target or "X"}]
        full = tok.apply_chat_template(messages, tokenize=False)
        if not parts.target:
            full = full.replace("X" + stop, stop, 1)
        ref = tok(full, add_special_tokens=False)["input_ids"]
        assert enc.input_ids == ref[:len(enc.input_ids)], kind
        assert enc.input_ids[-1] == stop_id and enc.input_ids.count(stop_id) == (3 if case == "smollm2" else 2)  # system, user, assistant
        # the loss covers exactly the assistant turn: target text + end-of-turn token
        n = len(_targets(enc))
        assert enc.labels[:-n] == [-100] * (len(enc.labels) - n) and enc.prompt_len == len(enc.labels) - n
        assert _targets(enc) == tok(parts.target, add_special_tokens=False)["input_ids"] + [stop_id], kind
        assert tok.decode(_targets(enc)) == parts.target + stop
        # the prompt alone ends with the generation prompt (what generation starts from)
        prompt = encode(tok, parts, 4096, with_target=False)
        gen = tok.apply_chat_template([{"role": "user", "content": parts.text()}], tokenize=False,
                                      add_generation_prompt=True)
        assert prompt.input_ids == tok(gen, add_special_tokens=False)["input_ids"] and _targets(prompt) == []
        assert tok.decode(prompt.input_ids) == parts.rendered()


@pytest.mark.parametrize("case", sorted(CASES))
def test_stage1_target_is_the_end_of_turn_token(case):
    make, stop = CASES[case]
    tok = make()
    enc = encode(tok, prompt_builder(data_cfg(), tok).stage1(Q, DOCS), 4096)
    assert _targets(enc) == [tok.convert_tokens_to_ids(stop)]
    if case == "llama3":  # not eos_token: the template closes the assistant turn with <|eot_id|>
        assert tok.eos_token_id not in _targets(enc)


@pytest.mark.parametrize("case", sorted(CASES))
def test_generation_stops_at_end_of_turn(case):
    from rag.generate import eos_ids_of

    make, stop = CASES[case]
    tok = make()
    b = prompt_builder(data_cfg(), tok)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None))
    ids = eos_ids_of(model, tok, b.stop_ids)
    assert tok.convert_tokens_to_ids(stop) in ids and tok.eos_token_id in ids
    assert eos_ids_of(model, tok) == [tok.eos_token_id]  # unchanged without the extra ids


@pytest.mark.parametrize("case", sorted(CASES))
def test_truncation_cuts_documents_only(case):
    make, _ = CASES[case]
    tok = make()
    b = prompt_builder(data_cfg(), tok)
    long_docs = [Passage(f"T{i}", "word " * 80) for i in range(4)]
    parts = b.stage2(Q, long_docs, "The capital of Zorvania is Plimford.")
    full = encode(tok, parts, 100_000)
    enc = encode(tok, parts, 600)
    assert enc.truncated and len(enc.input_ids) == 600 and len(full.input_ids) > 600
    assert _targets(enc) == _targets(full)
    text = tok.decode(enc.input_ids)
    assert text.startswith(b.chat.user_prefix + parts.head) and (parts.tail + b.chat.user_suffix) in text
    with pytest.raises(ValueError):  # prompt wrapping + question + target alone do not fit
        encode(tok, parts, 50)


@pytest.mark.parametrize("case", sorted(CASES))
def test_mining_target_is_the_first_token_of_the_assistant_turn(case):
    from attribution.examples import ExampleBuilder
    from attribution.stats import OK

    make, _ = CASES[case]
    tok = make()
    b = prompt_builder(data_cfg(), tok)
    assert b.yes_word == "YES" and b.target_prefix == ""
    rec = SimpleNamespace(id="q1", question=Q, answers=["Plimford"])
    yes = ExampleBuilder(tok, b, "yes_prob", "query", 4096)
    assert yes.yes_id == tok("YES", add_special_tokens=False)["input_ids"][0]
    ex = yes.build(0, rec, DOCS[0], DOCS[2])
    assert ex.status == OK
    rel, irr = ex.inputs
    assert rel.target.token_id == yes.yes_id
    assert tok.decode(rel.input_ids.tolist()).endswith(b.chat.user_suffix)
    assert tok.decode(rel.baseline_ids.tolist()) == b.mining(Q, "Plimford", None).rendered()
    ans = ExampleBuilder(tok, b, "answer_logprob", "query", 4096).build(0, rec, DOCS[0], DOCS[2])
    assert ans.inputs[0].target.token_id == tok("Plimford", add_special_tokens=False)["input_ids"][0]


def test_no_template_auto_equals_never_and_plain_builder():
    """The embedded model's tokenizer has no template: auto == never == the plain builder, byte for byte."""
    from benchmarks.embedded.tokenizer import build_tokenizer
    from benchmarks.embedded.world import World

    world = World(0)
    tok = build_tokenizer(world)
    assert not getattr(tok, "chat_template", None)
    names = world.world_entities
    docs = [Passage(n, f"{n} color red . {n} city paris .") for n in names[:5]]
    q = f"{names[0]} color ?"
    plain = PromptBuilder("compact")
    for mode in ("auto", "never"):
        b = prompt_builder(data_cfg(mode, "compact"), tok)
        assert b.chat is None and b.stop_ids == [] and b.yes_word == plain.yes_word == "yes"
        for (kind, p1), p2 in zip(_kinds(b).items(), _kinds(plain).values()):
            for kw in ({}, {"with_target": False}, {"add_eos": False}):
                assert encode(tok, p1, 256, **kw) == encode(tok, p2, 256, **kw), (mode, kind)


def test_never_ignores_a_template():
    tok = smollm2_tokenizer()
    b = prompt_builder(data_cfg("never"), tok)
    assert b.chat is None and b.yes_word == " YES"
    enc = encode(tok, b.stage1(Q, DOCS), 4096)
    assert _targets(enc) == [tok.eos_token_id] and enc.input_ids[0] == tok.bos_token_id


def test_always_without_template_is_refused():
    tok = byte_tokenizer(["<pad>", "</s>"], eos="</s>")
    with pytest.raises(UserError, match="no chat template"):
        prompt_builder(data_cfg("always"), tok)
    assert prompt_builder(data_cfg("auto"), tok).chat is None


@pytest.mark.parametrize("template", [NO_STOP_TEMPLATE, TEXT_STOP_TEMPLATE])
def test_template_without_stop_token_is_refused(template):
    tok = byte_tokenizer(["<pad>", "</s>"], eos="</s>", template=template)
    for mode in ("auto", "always"):
        with pytest.raises(UserError, match="without a stop token"):
            prompt_builder(data_cfg(mode), tok)
    assert prompt_builder(data_cfg("never"), tok).chat is None


def test_bad_mode_is_refused():
    with pytest.raises(UserError, match="chat_template"):
        prompt_builder(data_cfg("sometimes"), smollm2_tokenizer())


def test_chat_user_turn_ends_with_the_question():
    """In chat the assistant turn is the answer cue: no "Evidence:" / "Answer:" / "Reply:" line in the user turn."""
    tok = smollm2_tokenizer()
    b = prompt_builder(data_cfg(), tok)
    for kind in ("two_step", "answer_only", "stage1"):
        assert _kinds(b)[kind].text().endswith(f"Question: {Q}"), kind
    for kind in ("mining", "mining_query"):
        assert _kinds(b)[kind].text().endswith("Reply YES or NO."), kind
    plain = PromptBuilder("paper")
    assert plain.two_step(Q, DOCS).text().endswith("Evidence:") and plain.mining(Q, "x", None).text().endswith("Reply:")
