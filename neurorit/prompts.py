"""Prompt templates and tokenization for every stage.

Prompt kinds: mining (verification prompt with and without the passage), stage 1 (instruction + question + K
irrelevant documents -> EOS only), stage 2 (instruction + question + top-K documents -> evidence summary),
inference (two-step: evidence then answer; or answer-only), and robust SFT (documents -> answer).

Two styles share the same slots: ``paper`` (English instructions in the spirit of the released prompts, for
real instruction-tuned models) and ``compact`` (one task word and short markers, all in the embedded model's
word-level vocabulary). ``encode`` tokenizes piece by piece and truncates documents only, never the
instruction, the question or the target.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from neurorit.records import Passage

NO_EVIDENCE = {"paper": "No relevant information is found in the documents.", "compact": "none ."}


@dataclass(frozen=True)
class Style:
    name: str
    doc: str  # format with i (1-based), title, text
    sep: str
    yes_word: str
    no_word: str
    verify_ctx: str  # format with passage (rendered doc), question, answer
    verify_noctx: str
    heads: dict  # task -> instruction head
    tails: dict  # task -> text after the question (the answer cue)
    question: str = "{question}"
    answer_marker: str = "answer :"


PAPER = Style(
    name="paper",
    doc="Document [{i}] (Title: {title}) {text}",
    sep="\n",
    yes_word=" YES",
    no_word=" NO",
    verify_ctx=("Passage: {passage}\nQuestion: {question}\nProposed answer: {answer}\n"
                "Can the proposed answer be derived from the passage? Reply YES or NO.\nReply:"),
    verify_noctx=("Question: {question}\nProposed answer: {answer}\n"
                  "Is the proposed answer correct? Reply YES or NO.\nReply:"),
    heads={
        "answer_only": "Answer the question using the documents if they help. Give only the answer.",
        "two_step": ("Read the documents, first extract the evidence relevant to the question, then answer "
                     "concisely.\nWrite 'Evidence:' followed by the evidence, then 'Answer:' followed by the answer."),
        "stage1": "Answer the question based on the documents. If the documents are irrelevant, output nothing.",
        "stage2": "Summarize the evidence in the documents that is relevant to the question.",
    },
    tails={"answer_only": "Answer:", "two_step": "Evidence:", "stage1": "Answer:", "stage2": "Evidence:"},
    question="Question: {question}",
    answer_marker="Answer:",
)

COMPACT = Style(
    name="compact",
    doc="doc : {text}",
    sep=" ",
    yes_word="yes",
    no_word="no",
    verify_ctx="verify doc : {passage} question : {question} proposed : {answer} reply :",
    verify_noctx="verify question : {question} proposed : {answer} reply :",
    heads={"answer_only": "qa", "two_step": "twostep", "stage1": "filter", "stage2": "summarize"},
    tails={"answer_only": "answer :", "two_step": "evidence :", "stage1": "output :", "stage2": "evidence :"},
    question="question : {question}",
    answer_marker="answer :",
)

STYLES = {"paper": PAPER, "compact": COMPACT}


@dataclass
class PromptParts:
    """A prompt as pieces: ``head`` + documents + ``tail``; ``target`` is what the model must write (may be "")."""

    head: str
    docs: list[str]
    tail: str
    target: str = ""
    sep: str = " "

    def text(self) -> str:
        pieces = [self.head] + self.docs + [self.tail]
        return self.sep.join(p for p in pieces if p)


class PromptBuilder:
    def __init__(self, style: str = "paper"):
        if style not in STYLES:
            raise ValueError(f"unknown prompt style {style!r}; use one of {', '.join(STYLES)}")
        self.style = STYLES[style]

    @property
    def yes_word(self) -> str:
        return self.style.yes_word

    @property
    def answer_marker(self) -> str:
        return self.style.answer_marker

    def no_evidence(self) -> str:
        return NO_EVIDENCE[self.style.name]

    def render_doc(self, i: int, p: Passage) -> str:
        return self.style.doc.format(i=i, title=p.title, text=p.text)

    def _task(self, task: str, question: str, docs: Sequence[Passage], target: str = "") -> PromptParts:
        s = self.style
        rendered = [self.render_doc(i + 1, p) for i, p in enumerate(docs)]
        tail = s.question.format(question=question) + s.sep + s.tails[task]
        return PromptParts(head=s.heads[task], docs=rendered, tail=tail, target=target, sep=s.sep)

    # ---------------------------------------------------------------- the prompt kinds
    def mining(self, question: str, answer: str, passage: Optional[Passage]) -> PromptParts:
        """Verification prompt; ``passage=None`` gives the query-only prompt (the IG baseline)."""
        s = self.style
        if passage is None:
            return PromptParts(head="", docs=[], tail=s.verify_noctx.format(question=question, answer=answer), sep=s.sep)
        head, rest = s.verify_ctx.split("{passage}", 1)
        return PromptParts(head=head.rstrip(), docs=[passage.text],
                           tail=rest.lstrip().format(question=question, answer=answer), sep=s.sep)

    def stage1(self, question: str, irrelevant_docs: Sequence[Passage]) -> PromptParts:
        return self._task("stage1", question, irrelevant_docs, target="")

    def stage2(self, question: str, docs: Sequence[Passage], evidence: str) -> PromptParts:
        return self._task("stage2", question, docs, target=evidence or self.no_evidence())

    def two_step(self, question: str, docs: Sequence[Passage]) -> PromptParts:
        return self._task("two_step", question, docs)

    def two_step_target(self, evidence: str, answer: str) -> str:
        return f"{evidence or self.no_evidence()}{self.style.sep}{self.style.answer_marker} {answer}"

    def answer_only(self, question: str, docs: Sequence[Passage], answer: str = "") -> PromptParts:
        return self._task("answer_only", question, docs, target=answer)


def prompt_builder(data_cfg, tokenizer) -> PromptBuilder:
    """The prompt builder of an experiment: ``data.prompt_style`` (every stage builds its prompts here)."""
    return PromptBuilder(data_cfg.prompt_style)


# ------------------------------------------------------------------------------------------- tokenization
@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens
    truncated: bool = False
    prompt_len: int = 0


@dataclass
class TruncationCounter:
    total: int = 0
    truncated: int = 0
    examples: list = field(default_factory=list)

    def add(self, enc: Encoded, example_id: str = "") -> None:
        self.total += 1
        if enc.truncated:
            self.truncated += 1
            if len(self.examples) < 5:
                self.examples.append(example_id)

    def report(self, what: str) -> str:
        return f"{what}: truncated documents in {self.truncated} of {self.total} examples"


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode(tokenizer, parts: PromptParts, max_length: int, add_eos: bool = True,
           with_target: bool = True) -> Encoded:
    """Tokenize ``parts``; documents are cut (from the last one backwards) so that instruction, question and
    target always fit. Labels cover the target (and EOS) only."""
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    head = _ids(tokenizer, parts.head)
    tail = _ids(tokenizer, (parts.sep if (parts.head or parts.docs) else "") + parts.tail)
    target: list[int] = []
    if with_target:
        target = _ids(tokenizer, (" " + parts.target) if parts.target else "")
        if add_eos:
            target = target + [tokenizer.eos_token_id]
    docs = [_ids(tokenizer, (parts.sep if (i > 0 or parts.head) else "") + d) for i, d in enumerate(parts.docs)]
    fixed = len(bos) + len(head) + len(tail) + len(target)
    if fixed > max_length:
        raise ValueError(f"instruction + question + target need {fixed} tokens > max_length {max_length}")
    budget = max_length - fixed
    truncated = False
    kept: list[int] = []
    for d in docs:
        if len(kept) + len(d) <= budget:
            kept.extend(d)
        else:
            kept.extend(d[: max(0, budget - len(kept))])
            truncated = True
            break
    prompt = bos + head + kept + tail
    return Encoded(input_ids=prompt + target, labels=[-100] * len(prompt) + target, truncated=truncated,
                   prompt_len=len(prompt))
