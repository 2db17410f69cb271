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


def _label_ids(enc) -> list[int]:
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
        messages = [{"role": "user", "content": parts.text()}, {"role": "assistant", "content": parts.output or "X"}]
        full = tok.apply_chat_template(messages, tokenize=False)
        if not parts.output:
            full = full.replace("X" + stop, stop, 1)
        ref = tok(full, add_special_tokens=False)["input_ids"]
        assert enc.input_ids == ref[:len(enc.input_ids)], kind
        assert enc.input_ids[-1] == stop_id and enc.input_ids.count(stop_id) == (3 if case == "smollm2" else 2)  # system, user, assistant
        # the loss covers exactly the assistant turn: target text + end-of-turn token
        n = len(_label_ids(enc))
        assert enc.labels[:-n] == [-100] * (len(enc.labels) - n) and enc.prompt_len == len(enc.labels) - n
        assert _label_ids(enc) == tok(parts.output, add_special_tokens=False)["input_ids"] + [stop_id], kind
        assert tok.decode(_label_ids(enc)) == parts.output + stop
        # the prompt alone ends with the generation prompt (what generation starts from)
        prompt = encode(tok, parts, 4096, with_output=False)
        gen = tok.apply_chat_template([{"role": "user", "content": parts.text()}], tokenize=False,
                                      add_generation_prompt=True)
        assert prompt.input_ids == tok(gen, add_special_tokens=False)["input_ids"] and _label_ids(prompt) == []
        assert tok.decode(prompt.input_ids) == parts.rendered()


@pytest.mark.parametrize("case", sorted(CASES))
def test_stage1_target_is_the_end_of_turn_token(case):
    make, stop = CASES[case]
    tok = make()
    enc = encode(tok, prompt_builder(data_cfg(), tok).stage1(Q, DOCS), 4096)
    assert _label_ids(enc) == [tok.convert_tokens_to_ids(stop)]
    if case == "llama3":  # not eos_token: the template closes the assistant turn with <|eot_id|>
        assert tok.eos_token_id not in _label_ids(enc)


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
    assert _label_ids(enc) == _label_ids(full)
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
    assert b.yes_word == "YES" and b.output_prefix == ""
    rec = SimpleNamespace(id="q1", question=Q, answers=["Plimford"])
    word = tok("YES", add_special_tokens=False)["input_ids"]
    yes = ExampleBuilder(tok, b, "yes_prob", "query", 4096)  # a split word too: its rows carry the later tokens
    ex = yes.build(0, rec, DOCS[0], DOCS[2])
    assert ex.status == OK
    rel, irr = ex.inputs
    assert rel.target.token_ids == tuple(word) and rel.target.reads == len(word)
    prompt, forced = rel.input_ids[:rel.scaled_position + 1], rel.input_ids[rel.scaled_position + 1:]
    assert tok.decode(prompt.tolist()).endswith(b.chat.user_suffix) and forced.tolist() == word[:-1]
    assert tok.decode(rel.baseline_ids.tolist()) == b.mining(Q, "Plimford", None).rendered()
    ans = ExampleBuilder(tok, b, "answer_logprob", "query", 4096).build(0, rec, DOCS[0], DOCS[2])
    assert ans.inputs[0].target.token_ids == (tok("Plimford", add_special_tokens=False)["input_ids"][0],)


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
            for kw in ({}, {"with_output": False}, {"add_eos": False}):
                assert encode(tok, p1, 256, **kw) == encode(tok, p2, 256, **kw), (mode, kind)


def test_never_ignores_a_template():
    tok = smollm2_tokenizer()
    b = prompt_builder(data_cfg("never"), tok)
    assert b.chat is None and b.yes_word == " YES"
    enc = encode(tok, b.stage1(Q, DOCS), 4096)
    assert _label_ids(enc) == [tok.eos_token_id] and enc.input_ids[0] == tok.bos_token_id


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


# ------------------------------------------------------------------ a fixed date (Llama-3.1's strftime_now)
LLAMA31_TEMPLATE = (  # the shape of Llama-3.1/3.2/3.3's template: today's date in the system header
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}"
    "{%- endif %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n' }}"
    "{{- 'Today Date: ' + date_string + '\n\n<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}")


def _freeze_clock(monkeypatch, year: int, month: int, day: int) -> None:
    """Make the templates' ``strftime_now`` see this date (transformers reads ``datetime.now()`` at render)."""
    import datetime as real
    from transformers.utils import chat_template_utils

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(year, month, day, 12, 0, 0)

    monkeypatch.setattr(chat_template_utils, "datetime", Frozen)


def _mining_ids(b: PromptBuilder, tok) -> list[int]:
    return encode(tok, b.mining(Q, "Plimford", DOCS[0]), 4096, with_output=False).input_ids


def test_llama31_prompt_does_not_change_with_the_date(monkeypatch):
    tok = llama3_tokenizer(LLAMA31_TEMPLATE)
    seen = []
    for date in ((2025, 1, 2), (2031, 12, 31)):
        _freeze_clock(monkeypatch, *date)
        raw = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        b = prompt_builder(data_cfg(), tok)
        seen.append((raw, b.chat.user_prefix, _mining_ids(b, tok)))
    (raw1, prefix1, ids1), (raw2, prefix2, ids2) = seen
    assert "02 Jan 2025" in raw1 and "31 Dec 2031" in raw2  # the clock is frozen: unfixed, the template moves
    assert prefix1 == prefix2 and "Today Date: 26 Jul 2024" in prefix1 and ids1 == ids2


def test_chat_date_is_a_config_key(monkeypatch):
    _freeze_clock(monkeypatch, 2030, 5, 5)
    cfg = SimpleNamespace(prompt_style="paper", chat_template="auto", chat_date="01 Mar 2025")
    b = prompt_builder(cfg, llama3_tokenizer(LLAMA31_TEMPLATE))
    assert "Today Date: 01 Mar 2025" in b.chat.user_prefix and "2030" not in b.chat.user_prefix


def test_chat_date_default_in_config():
    from neurorit.config import load_config
    from neurorit.prompts import DEFAULT_CHAT_DATE

    cfg = load_config(None, ["--data.chat_date", "9 Sep 2024", "--data.chat_template_file", "t.jinja"])
    assert cfg.data.chat_date == "9 Sep 2024" and cfg.data.chat_template_file == "t.jinja"
    assert load_config(None, []).data.chat_date == DEFAULT_CHAT_DATE


# ------------------------------------------------------------------ data.chat_template_file
def _file_cfg(path: str, mode: str = "auto"):
    return SimpleNamespace(prompt_style="paper", chat_template=mode, chat_template_file=str(path))


def test_template_file_replaces_the_tokenizers(tmp_path):
    path = tmp_path / "llama31.jinja"
    path.write_text(LLAMA31_TEMPLATE)
    tok = llama3_tokenizer(template=None)
    assert not getattr(tok, "chat_template", None)
    for mode in ("auto", "always"):
        b = prompt_builder(_file_cfg(path, mode), tok)
        assert b.chat.stop_id == tok.convert_tokens_to_ids("<|eot_id|>")
        assert b.chat.user_prefix.startswith("<|begin_of_text|><|start_header_id|>system")
    own = llama3_tokenizer()  # a tokenizer with its own template (no system header): the file wins
    assert "Today Date" in prompt_builder(_file_cfg(path), own).chat.user_prefix
    assert "Today Date" not in prompt_builder(data_cfg(), own).chat.user_prefix


def test_template_file_refusals(tmp_path):
    tok = llama3_tokenizer(template=None)
    with pytest.raises(UserError, match="cannot be read"):
        prompt_builder(_file_cfg(tmp_path / "missing.jinja"), tok)
    empty = tmp_path / "empty.jinja"
    empty.write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        prompt_builder(_file_cfg(empty), tok)
    good = tmp_path / "t.jinja"
    good.write_text(LLAMA31_TEMPLATE)
    with pytest.raises(UserError, match="'never'"):
        prompt_builder(_file_cfg(good, "never"), tok)


# ------------------------------------------------------------------ the IG baseline (issue 19, faithful mining)
def _without_span(full: list[int], span: list[int]) -> list[list[int]]:
    """``full`` with one occurrence of ``span`` removed, for every place ``span`` occurs."""
    n = len(span)
    return [full[:i] + full[i + n:] for i in range(len(full) - n + 1) if full[i:i + n] == span]


@pytest.mark.parametrize("case", ["plain", "smollm2", "llama3", "llama31"])
def test_baseline_is_the_prompt_minus_the_passage(case):
    tok = {"plain": smollm2_tokenizer, "smollm2": smollm2_tokenizer, "llama3": llama3_tokenizer,
           "llama31": lambda: llama3_tokenizer(LLAMA31_TEMPLATE)}[case]()
    b = prompt_builder(data_cfg("never" if case == "plain" else "auto"), tok)
    assert (b.chat is None) == (case == "plain")
    full = encode(tok, b.mining(Q, "Plimford", DOCS[0]), 4096, with_output=False).input_ids
    base = encode(tok, b.mining(Q, "Plimford", None), 4096, with_output=False).input_ids
    passage = tok(b.style.sep + DOCS[0].text, add_special_tokens=False)["input_ids"]
    assert len(full) == len(base) + len(passage)
    assert _without_span(full, passage) == [base]  # the only difference: the passage (and its separator)
    assert "derived from the passage" in tok.decode(base)  # the same instruction, not another question
