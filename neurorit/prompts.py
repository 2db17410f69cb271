"""Prompt templates and tokenization for every stage.

Prompt kinds: mining (verification prompt with and without the passage), stage 1 (instruction + question + K
irrelevant documents -> EOS only), stage 2 (instruction + question + top-K documents -> evidence summary), teacher
(what a teacher model reads to write that summary, ``rag/write_evidence.py``),
inference (two-step: evidence then answer; or answer-only), and robust SFT (documents -> answer).

Two styles share the same slots: ``paper`` (English instructions in the spirit of the released prompts, for
real instruction-tuned models) and ``compact`` (one task word and short markers, all in the embedded model's
word-level vocabulary). ``encode`` tokenizes piece by piece and truncates documents only, never the
instruction, the question or the output.

Chat templates (``data.chat_template``: ``auto`` = the tokenizer's template when it has one, ``never``,
``always``): with a template, the prompt (instruction + documents + question + cue) is the *user* turn and the
output the *assistant* turn, rendered by the tokenizer's own template (``ChatFormat``); labels cover the
assistant turn only: the output and the end-of-turn token that closes it (``<|im_end|>`` for SmolLM2 / ChatML,
``<|eot_id|>`` for Llama-3), which is also stage 1's only label (its output is empty) and a stop token for
generation (``PromptBuilder.stop_ids``). Without a template (the embedded model) nothing changes.
``data.chat_template_file`` replaces the tokenizer's template with a Jinja file. Templates render with a fixed
``date_string`` (``data.chat_date``): Llama-3.1-style templates otherwise write today's date into the system
header (``strftime_now``), and a prompt would change from one day to the next. ``export_tokenizer`` gives an
export the template its prompts were rendered with (a ``data.chat_template_file`` included) and that date, so a
server that applies the exported ``tokenizer_config.json`` builds the same prompt.

The mining baseline (``PromptBuilder.mining`` without a passage) is the attributed prompt with only the passage
removed: the same instruction, cue and chat wrapping; encoded, the two differ by the passage's tokens alone.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Optional, Sequence

from neurorit.errors import UserError
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
    heads: dict  # task -> instruction head
    tails: dict  # task -> text after the question (the answer cue)
    question: str = "{question}"
    answer_marker: str = "answer :"

    @property
    def verify_noctx(self) -> str:
        """The verification prompt without its passage (the IG baseline's text; its words are ``verify_ctx``'s)."""
        head, rest = self.verify_ctx.split("{passage}", 1)
        return self.sep.join(p for p in (head.rstrip(), rest.lstrip()) if p)


PAPER = Style(
    name="paper",
    doc="Document [{i}] (Title: {title}) {text}",
    sep="\n",
    yes_word=" YES",
    no_word=" NO",
    verify_ctx=("Passage: {passage}\nQuestion: {question}\nProposed answer: {answer}\n"
                "Can the proposed answer be derived from the passage? Reply YES or NO.\nReply:"),
    heads={
        "answer_only": "Answer the question using the documents if they help. Give only the answer.",
        "two_step": ("Read the documents, first extract the evidence relevant to the question, then answer "
                     "concisely.\nWrite 'Evidence:' followed by the evidence, then 'Answer:' followed by the answer."),
        "stage1": "Answer the question based on the documents. If the documents are irrelevant, output nothing.",
        "stage2": "Summarize the evidence in the documents that is relevant to the question.",
        "teacher": ("Summarize, in a few short sentences, the parts of the documents that are relevant to the "
                    "question and help to answer it. Use only what the documents say. Do not answer the question "
                    "from memory. If no document holds relevant information, write exactly: "
                    + NO_EVIDENCE["paper"]),
    },
    tails={"answer_only": "Answer:", "two_step": "Evidence:", "stage1": "Answer:", "stage2": "Evidence:",
           "teacher": "Evidence:"},
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
    # teacher: stage 2's own prompt (the embedded model learned to summarize with it; no new vocabulary)
    heads={"answer_only": "qa", "two_step": "twostep", "stage1": "filter", "stage2": "summarize",
           "teacher": "summarize"},
    tails={"answer_only": "answer :", "two_step": "evidence :", "stage1": "output :", "stage2": "evidence :",
           "teacher": "evidence :"},
    question="question : {question}",
    answer_marker="answer :",
)

STYLES = {"paper": PAPER, "compact": COMPACT}


CHAT_MODES = ("auto", "never", "always")
_DATE_PIN = "{%- if date_string is not defined %}{%- set date_string = "  # export_tokenizer's first line
DEFAULT_CHAT_DATE = "26 Jul 2024"  # data.chat_date: the date_string templates render (Llama-3.1's own fallback)
_USER, _ASSISTANT = "NEURORITUSERTURN", "NEURORITASSISTANTTURN"  # sentinels rendered through the template


@dataclass(frozen=True)
class ChatFormat:
    """A tokenizer's chat template cut around one user turn and one assistant turn.

    The prompt is ``user_prefix + <user text> + user_suffix`` (``user_suffix`` ends with the generation prompt
    and whatever the template writes before an assistant message, e.g. ``<|im_start|>assistant\n``); the output
    is ``<assistant text>`` followed by ``stop_id``, the token that closes the assistant turn.
    """

    user_prefix: str
    user_suffix: str
    stop_id: int
    stop_token: str
    close: str  # the full text after the assistant message (e.g. "<|im_end|>\n"); only its first token is trained

    @classmethod
    def from_tokenizer(cls, tokenizer, template: Optional[str] = None,
                       date_string: str = DEFAULT_CHAT_DATE) -> "ChatFormat":
        """Render sentinel messages through ``template`` (default: the tokenizer's own) with a fixed
        ``date_string``; UserError when the template has no usable shape (no user / assistant slot, or an
        assistant turn that does not end with a special token)."""
        def render(messages, gen: bool) -> str:
            try:
                out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                                    chat_template=template, date_string=date_string)
            except Exception as err:  # jinja errors of a template that cannot render these messages
                raise UserError(f"the tokenizer's chat template cannot render a user / assistant exchange ({err}); "
                                f"set data.chat_template: never") from None
            return out if isinstance(out, str) else str(out)

        user_only = render([{"role": "user", "content": _USER}], True)
        both = render([{"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSISTANT}], False)
        if user_only.count(_USER) != 1 or both.count(_ASSISTANT) != 1:
            raise UserError("the tokenizer's chat template does not render the user message and the assistant "
                            "message exactly once each; set data.chat_template: never")
        prefix, suffix = user_only.split(_USER)
        a = both.index(_ASSISTANT)
        before, close = both[:a], both[a + len(_ASSISTANT):]
        if before.startswith(user_only):  # what the template writes between the generation prompt and the text
            suffix += before[len(user_only):]
        if not close.strip():
            raise UserError("the tokenizer's chat template leaves the assistant turn without a stop token (nothing "
                            "follows the assistant message), so a trained model could not say where its answer "
                            "ends; use a template that closes the turn with a special token, or data.chat_template: never")
        ids = tokenizer(close.lstrip(), add_special_tokens=False)["input_ids"]
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= {int(i) for i in (getattr(tokenizer, "added_tokens_decoder", {}) or {})}
        special.discard(getattr(tokenizer, "unk_token_id", None))  # a token the vocabulary lacks reads as <unk>
        if not ids or int(ids[0]) not in special:
            own = sorted(tokenizer.convert_ids_to_tokens(sorted(special)))[:8]
            raise UserError(f"the chat template leaves the assistant turn without a stop token: it closes the turn "
                            f"with {close!r}, which does not start with a special token of this tokenizer, so "
                            f"generation could not stop at the end of the turn; close the assistant turn with one "
                            f"of its special tokens ({', '.join(own) or 'it has none'}), or set "
                            f"data.chat_template: never")
        stop = int(ids[0])
        return cls(user_prefix=prefix, user_suffix=suffix, stop_id=stop,
                   stop_token=tokenizer.convert_ids_to_tokens(stop), close=close)


@dataclass
class PromptParts:
    """A prompt as pieces: ``head`` + documents + ``tail``; ``output`` is what the model must write (may be "").

    With ``chat`` set, ``head`` + documents + ``tail`` form the user turn and ``output`` the assistant turn."""

    head: str
    docs: list[str]
    tail: str
    output: str = ""
    sep: str = " "
    chat: Optional[ChatFormat] = None

    def text(self) -> str:
        """The prompt text without chat wrapping (the user turn's content when chat is on)."""
        pieces = [self.head] + self.docs + [self.tail]
        return self.sep.join(p for p in pieces if p)

    def rendered(self) -> str:
        """The full prompt text the model reads (chat-wrapped when chat is on); for display and checks."""
        return self.chat.user_prefix + self.text() + self.chat.user_suffix if self.chat else self.text()


class PromptBuilder:
    def __init__(self, style: str = "paper", chat: Optional[ChatFormat] = None, stage1_task: str = "stage1"):
        """``stage1_task``: the instruction stage 1 trains under: ``stage1`` (its own: "if the documents are
        irrelevant, output nothing") or an inference instruction (``two_step`` / ``answer_only``), so that the
        suppression is learned under the prompt it is used with (``data.stage1_instruction``)."""
        if style not in STYLES:
            raise ValueError(f"unknown prompt style {style!r}; use one of {', '.join(STYLES)}")
        self.style = STYLES[style]
        self.chat = chat
        self.stage1_task = stage1_task

    @property
    def yes_word(self) -> str:
        """The YES word as the model writes it first after the prompt (in chat: the assistant turn's first word,
        without the leading space)."""
        return self.style.yes_word.lstrip() if self.chat else self.style.yes_word

    @property
    def no_word(self) -> str:
        """The NO word as the model writes it first after the prompt (as ``yes_word``)."""
        return self.style.no_word.lstrip() if self.chat else self.style.no_word

    @property
    def output_prefix(self) -> str:
        """What precedes an output's first word: a space after a plain prompt, nothing at the start of a turn."""
        return "" if self.chat else " "

    @property
    def stop_ids(self) -> list[int]:
        """Extra stop token ids for generation: the chat end-of-turn token (empty without chat)."""
        return [self.chat.stop_id] if self.chat else []

    @property
    def answer_marker(self) -> str:
        return self.style.answer_marker

    def no_evidence(self) -> str:
        return NO_EVIDENCE[self.style.name]

    def _wrap(self, parts: PromptParts) -> PromptParts:
        parts.chat = self.chat
        return parts

    def render_doc(self, i: int, p: Passage) -> str:
        return self.style.doc.format(i=i, title=p.title, text=p.text)

    def _task(self, task: str, question: str, docs: Sequence[Passage], output: str = "") -> PromptParts:
        s = self.style
        rendered = [self.render_doc(i + 1, p) for i, p in enumerate(docs)]
        tail = s.question.format(question=question)
        if not self.chat:  # a chat model's answer cue is the assistant turn itself (a cue in the user turn is
            tail += s.sep + s.tails[task]  # echoed by small models: "Evidence: Evidence: ...")
        return self._wrap(PromptParts(head=s.heads[task], docs=rendered, tail=tail, output=output, sep=s.sep))

    # ---------------------------------------------------------------- the prompt kinds
    def mining(self, question: str, answer: str, passage: Optional[Passage]) -> PromptParts:
        """Verification prompt; ``passage=None`` gives the IG baseline: the same prompt with only the passage
        removed (same instruction, cue and chat wrapping), so that the attribution compares like with like."""
        s = self.style
        head, rest = s.verify_ctx.split("{passage}", 1)
        return self._wrap(PromptParts(head=head.rstrip(), docs=[passage.text] if passage is not None else [],
                                      tail=self._cue(rest.lstrip().format(question=question, answer=answer)),
                                      sep=s.sep))

    def _cue(self, tail: str) -> str:
        """In chat, the verification prompt's last line ("Reply:") goes: the assistant turn is the reply."""
        if self.chat:
            rest, _, last = tail.rstrip().rpartition(self.style.sep)
            if rest and last.strip().lower().replace(" ", "") == "reply:":
                return rest.rstrip()
        return tail

    def stage1(self, question: str, irrelevant_docs: Sequence[Passage]) -> PromptParts:
        return self._task(self.stage1_task, question, irrelevant_docs, output="")

    def stage2(self, question: str, docs: Sequence[Passage], evidence: str) -> PromptParts:
        return self._task("stage2", question, docs, output=evidence or self.no_evidence())

    def teacher(self, question: str, docs: Sequence[Passage]) -> PromptParts:
        """A teacher model's prompt for writing a record's stage-2 evidence (``rag/write_evidence.py``): the
        relevant parts of ``docs`` as a short summary, or ``no_evidence()`` when none is relevant."""
        return self._task("teacher", question, docs)

    def two_step(self, question: str, docs: Sequence[Passage]) -> PromptParts:
        return self._task("two_step", question, docs)

    def two_step_output(self, evidence: str, answer: str) -> str:
        return f"{evidence or self.no_evidence()}{self.style.sep}{self.style.answer_marker} {answer}"

    def answer_only(self, question: str, docs: Sequence[Passage], answer: str = "") -> PromptParts:
        return self._task("answer_only", question, docs, output=answer)


def read_chat_template(path: str) -> str:
    """The Jinja text of ``data.chat_template_file``, or a one-line UserError naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"data.chat_template_file {path}: cannot be read ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not text.strip():
        raise UserError(f"data.chat_template_file {path}: the file is empty; give a Jinja chat template")
    return text


def chat_format(mode: str, tokenizer, template_file: str = "",
                date_string: str = DEFAULT_CHAT_DATE) -> Optional[ChatFormat]:
    """The chat format ``data.chat_template`` asks for: None for ``never``, and for ``auto`` when there is no
    template (the tokenizer has none and no ``template_file`` is given: a template-less tokenizer behaves exactly
    as ``never``); UserError for ``always`` without a template, or a ``template_file`` under ``never``."""
    if mode not in CHAT_MODES:
        raise UserError(f"config key 'data.chat_template': {mode!r} is not allowed; use one of "
                        f"{', '.join(repr(m) for m in CHAT_MODES)}")
    if template_file and mode == "never":
        raise UserError(f"data.chat_template_file is {template_file!r} but data.chat_template is 'never'; set "
                        f"data.chat_template: auto (or always) to use the file, or leave the file empty")
    template = read_chat_template(template_file) if template_file else None
    has = template is not None or (tokenizer is not None and bool(getattr(tokenizer, "chat_template", None)))
    if mode == "never" or (mode == "auto" and not has):
        return None
    if not has:
        name = getattr(tokenizer, "name_or_path", "") or "the model"
        raise UserError(f"data.chat_template is 'always' but the tokenizer of {name} has no chat template; use "
                        f"a model folder whose tokenizer_config.json (or chat_template.jinja) has one, give "
                        f"data.chat_template_file, or set data.chat_template: auto / never")
    return ChatFormat.from_tokenizer(tokenizer, template, date_string)


def export_tokenizer(data_cfg, tokenizer):
    """The tokenizer an export carries: with a chat template in use, a copy whose ``chat_template`` is the one the
    prompts were rendered with (``data.chat_template_file``'s text, else the tokenizer's own), its
    ``date_string`` pinned to ``data.chat_date`` when the template reads one (a caller's own date still wins);
    without one (``never``, or ``auto`` with no template) ``tokenizer`` itself, untouched."""
    mode, path = getattr(data_cfg, "chat_template", "auto"), getattr(data_cfg, "chat_template_file", "")
    template = read_chat_template(path) if path and mode != "never" else getattr(tokenizer, "chat_template", None)
    if mode == "never" or not template or not isinstance(template, str):
        return tokenizer
    if template.startswith(_DATE_PIN):  # an earlier stage's export: pinned again to this run's date
        template = template.split("\n", 1)[1]
    if "date_string" in template:
        date = json.dumps(getattr(data_cfg, "chat_date", DEFAULT_CHAT_DATE))
        template = f"{_DATE_PIN}{date} %}}{{%- endif %}}\n{template}"
    out = copy.deepcopy(tokenizer)
    out.chat_template = template
    return out


def prompt_builder(data_cfg, tokenizer, instruction: str = "two_step") -> PromptBuilder:
    """The prompt builder of an experiment: ``data.prompt_style``, chat-wrapped per ``data.chat_template``,
    ``data.chat_template_file`` and ``data.chat_date``; stage 1 under ``instruction`` (``eval.instruction``) when
    ``data.stage1_instruction`` is ``evaluation``, else under its own (every stage builds its prompts here)."""
    chat = chat_format(getattr(data_cfg, "chat_template", "auto"), tokenizer,
                       getattr(data_cfg, "chat_template_file", ""), getattr(data_cfg, "chat_date", DEFAULT_CHAT_DATE))
    own = getattr(data_cfg, "stage1_instruction", "own") == "own"
    return PromptBuilder(data_cfg.prompt_style, chat, "stage1" if own else instruction)


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
           with_output: bool = True) -> Encoded:
    """Tokenize ``parts``; documents are cut (from the last one backwards) so that instruction, question and
    output always fit. Labels cover the output (and EOS) only.

    With ``parts.chat``: the template's text before and after the user turn wraps the prompt (no separate BOS:
    the template writes its own), the output starts the assistant turn without a leading space, and
    ``add_eos`` appends the end-of-turn token instead of ``eos_token``."""
    chat = parts.chat
    if chat is None:
        bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
        after: list[int] = []
    else:
        bos, after = _ids(tokenizer, chat.user_prefix), _ids(tokenizer, chat.user_suffix)
    head = _ids(tokenizer, parts.head)
    tail = _ids(tokenizer, (parts.sep if (parts.head or parts.docs) else "") + parts.tail) + after
    output: list[int] = []
    if with_output:
        lead = "" if chat is not None else " "
        output = _ids(tokenizer, (lead + parts.output) if parts.output else "")
        if add_eos:
            output = output + [chat.stop_id if chat is not None else tokenizer.eos_token_id]
    docs = [_ids(tokenizer, (parts.sep if (i > 0 or parts.head) else "") + d) for i, d in enumerate(parts.docs)]
    fixed = len(bos) + len(head) + len(tail) + len(output)
    if fixed > max_length:
        raise ValueError(f"instruction + question + output need {fixed} tokens > max_length {max_length}")
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
    return Encoded(input_ids=prompt + output, labels=[-100] * len(prompt) + output, truncated=truncated,
                   prompt_len=len(prompt))
