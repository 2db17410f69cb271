"""Attribution targets: the scalar F that integrated gradients explains, one class per target in a registry.

A target class owns its prompt (``prompt``), the token ids it scores for one example (``for_answer``), the
positions it reads and its scalar (``value(logits)``). An instance is one example's target: ``token_ids`` (what
it scores) and ``continuation`` (teacher-forced tokens appended after the prompt). The activation that IG scales
is the last *prompt* token's; F reads the logits at that position and at every continuation token
(``reads = len(continuation) + 1`` positions, the last ``reads`` of the input). Both IG paths run every target
(the fast path's rows carry the continuation tokens after the scaled one).

Registered (names also listed in ``neurorit/config.py`` ``ATTRIBUTION_TARGETS``, which the config validates):

- ``yes_prob``: P(the whole YES word) after the verification prompt (docs/DESIGN.md §2). When the word is one
  token this is the softmax probability at the last prompt position (the paper's target); when it splits (SmolLM2:
  "YES" = "Y" + "ES") the product of its tokens' probabilities, teacher-forced.
- ``yes_no_margin``: log P(yes words) - log P(no words) after the verification prompt, at the last position; the
  words are the style's YES / NO word in upper, title and lower case, those that are one token.
- ``answer_logprob``: log P(the gold answer's first token) after the answer-only prompt.
- ``answer_seq_logprob``: log P(the whole gold answer), teacher-forced after the answer-only prompt.

The scored word is the one the model writes first after the prompt: after a plain prompt with its leading space
(" YES"), at the start of a chat assistant turn without it ("YES") (``PromptBuilder.yes_word`` /
``output_prefix``). A new target is one class with ``@target("name")`` plus its name in ``ATTRIBUTION_TARGETS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from neurorit.errors import UserError
from neurorit.prompts import PromptBuilder, PromptParts

TARGETS: dict[str, type["Target"]] = {}


def target(name: str):
    """Class decorator: register an attribution target under its config name."""
    def register(cls):
        cls.name = name
        TARGETS[name] = cls
        return cls
    return register


def get(name: str) -> type["Target"]:
    if name not in TARGETS:
        raise UserError(f"config key 'mining.target': {name!r} is not a registered attribution target; use one of "
                        f"{', '.join(TARGETS)}")
    return TARGETS[name]


def token_ids(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` (no special tokens); empty for empty text."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def first_token(tokenizer, text: str) -> Optional[int]:
    """Id of the first token of ``text`` (no special tokens); None when it tokenizes to nothing."""
    ids = token_ids(tokenizer, text)
    return ids[0] if ids else None


class _LogProbAt(torch.autograd.Function):
    """``log_softmax(logits)[:, token]`` without materialising the log-softmax or a one-hot gradient: forward one
    logsumexp, backward ``g * (onehot - softmax)`` written once (the fast path's rows: same numbers as ``value``)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, token: int) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, lse)
        ctx.token = token
        return logits[:, token] - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, lse = ctx.saved_tensors
        out = torch.sub(logits, lse.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))
        out[:, ctx.token] += grad
        return out, None


@dataclass(frozen=True)
class Target:
    """One example's attribution target. Subclasses define the classmethods (building) and ``value``."""

    token_ids: tuple  # the scored tokens
    continuation: tuple = ()  # teacher-forced tokens after the prompt (each adds one read position)
    name: ClassVar[str] = ""

    @property
    def reads(self) -> int:
        """Positions F reads: the scaled (last prompt) position and one per continuation token."""
        return len(self.continuation) + 1

    # ------------------------------------------------------------------ building, per tokenizer and prompts
    @classmethod
    def prompt(cls, prompts: PromptBuilder, question: str, answer: str, passage) -> PromptParts:
        """The prompt (``passage=None``: the query-only baseline prompt)."""
        return prompts.answer_only(question, [passage] if passage is not None else [])

    @classmethod
    def for_answer(cls, tokenizer, prompts: PromptBuilder, answer: str) -> Optional["Target"]:
        """This target for a question with gold ``answer``; None when it scores nothing (the example is skipped)."""
        raise NotImplementedError

    @classmethod
    def check(cls, tokenizer, prompts: PromptBuilder, algorithm: str) -> None:
        """A one-line UserError when this target cannot be mined with this tokenizer and IG algorithm."""

    @classmethod
    def stand_in(cls, token: int) -> "Target":
        """A target over one token, for a rank's stand-in passes (results thrown away)."""
        return cls((token,))

    # ------------------------------------------------------------------ the scalar
    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """F per row from logits ``[rows, reads, vocab]`` at the read positions (computed in fp32)."""
        raise NotImplementedError

    def fused_value(self, logits: torch.Tensor) -> torch.Tensor:
        """``value`` for the fast path's rows (may save memory; the same numbers)."""
        return self.value(logits)


class _TeacherForced(Target):
    """F = sum of log P(token j | prompt, tokens < j) over ``token_ids``, read at positions scaled .. scaled+n-1."""

    @classmethod
    def of(cls, ids: list[int]) -> Optional["Target"]:
        return cls(tuple(ids), tuple(ids[:-1])) if ids else None

    def logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=-1)
        index = torch.tensor(self.token_ids, device=logits.device).view(1, -1, 1).expand(logits.shape[0], -1, 1)
        return logp.gather(-1, index)[..., 0].sum(-1)

    def fused_value(self, logits: torch.Tensor) -> torch.Tensor:
        if self.reads != 1:
            return self.value(logits)
        logp = _LogProbAt.apply(logits[:, 0].float(), int(self.token_ids[0]))
        return self.from_logprob(logp)

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        if self.reads == 1:  # one token: the paper's formula, as computed before targets were classes
            return self.from_logprob(torch.log_softmax(logits[:, 0].float(), dim=-1)[:, self.token_ids[0]])
        return self.from_logprob(self.logprobs(logits))

    def from_logprob(self, logp: torch.Tensor) -> torch.Tensor:
        return logp


@target("yes_prob")
class YesProb(_TeacherForced):
    """P(the whole YES word) after the verification prompt."""

    @classmethod
    def prompt(cls, prompts, question, answer, passage):
        return prompts.mining(question, answer, passage)

    @classmethod
    def for_answer(cls, tokenizer, prompts, answer):
        return cls.of(token_ids(tokenizer, prompts.yes_word))

    @classmethod
    def check(cls, tokenizer, prompts, algorithm):
        if not token_ids(tokenizer, prompts.yes_word):
            raise UserError(f"the tokenizer gives no token for the YES word {prompts.yes_word!r}")

    def from_logprob(self, logp: torch.Tensor) -> torch.Tensor:
        return logp.exp()


def _one_token_words(tokenizer, word: str) -> list[int]:
    """Ids of ``word`` in upper, title and lower case (its leading space kept) that are one known token each."""
    out = []
    for variant in (word.upper(), word.title(), word.lower()):
        ids = token_ids(tokenizer, variant)
        if len(ids) == 1 and ids[0] not in out and ids[0] != getattr(tokenizer, "unk_token_id", None):
            out.append(ids[0])
    return out


@target("yes_no_margin")
@dataclass(frozen=True)
class YesNoMargin(Target):
    """log P(yes words) - log P(no words) after the verification prompt, at its last position: ``token_ids``
    holds the ``yes_count`` yes ids, then the no ids."""

    yes_count: int = 1

    @classmethod
    def prompt(cls, prompts, question, answer, passage):
        return prompts.mining(question, answer, passage)

    @classmethod
    def for_answer(cls, tokenizer, prompts, answer):
        yes, no = (_one_token_words(tokenizer, w) for w in (prompts.yes_word, prompts.no_word))
        return cls(tuple(yes + no), (), len(yes)) if yes and no else None

    @classmethod
    def check(cls, tokenizer, prompts, algorithm):
        for word in (prompts.yes_word, prompts.no_word):
            if not _one_token_words(tokenizer, word):
                raise UserError(f"mining.target {cls.name}: no case of {word!r} is one token for this tokenizer; "
                                f"use another mining.target")

    @classmethod
    def stand_in(cls, token):
        return cls((token, token), (), 1)

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits[:, 0].float(), dim=-1)
        ids = torch.tensor(self.token_ids, device=logits.device)
        return (torch.logsumexp(logp[:, ids[:self.yes_count]], -1) -
                torch.logsumexp(logp[:, ids[self.yes_count:]], -1))


@target("answer_logprob")
class AnswerLogprob(_TeacherForced):
    """log P(the gold answer's first token) after the answer-only prompt."""

    @classmethod
    def for_answer(cls, tokenizer, prompts, answer):
        return cls.of(token_ids(tokenizer, prompts.output_prefix + answer.strip())[:1] if answer.strip() else [])


@target("answer_seq_logprob")
class AnswerSeqLogprob(_TeacherForced):
    """log P(the whole gold answer) after the answer-only prompt, teacher-forced."""

    @classmethod
    def for_answer(cls, tokenizer, prompts, answer):
        return cls.of(token_ids(tokenizer, prompts.output_prefix + answer.strip()) if answer.strip() else [])
