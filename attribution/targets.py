"""The attribution target F: a scalar per row, read from the logits at the last prompt position.

``yes_prob``: softmax probability of the first token of the YES word (docs/DESIGN.md §2).
``answer_logprob``: log-probability of the first token of the gold answer.
The token is the one the model writes first after the prompt: after a plain prompt the word with its leading
space (" YES"), at the start of a chat assistant turn the word alone ("YES"); ``attribution/examples.py`` picks it
from the prompt builder (``PromptBuilder.yes_word`` / ``output_prefix``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TARGETS = ("yes_prob", "answer_logprob")


@dataclass(frozen=True)
class Target:
    kind: str  # one of TARGETS
    token_id: int

    def __post_init__(self):
        if self.kind not in TARGETS:
            raise ValueError(f"unknown target {self.kind!r}; use one of {', '.join(TARGETS)}")

    def value(self, last_logits: torch.Tensor) -> torch.Tensor:
        """F per row from logits ``[rows, vocab]`` at the last position (computed in fp32)."""
        logp = torch.log_softmax(last_logits.float(), dim=-1)[:, self.token_id]
        return logp.exp() if self.kind == "yes_prob" else logp


def first_token(tokenizer, text: str) -> int | None:
    """Id of the first token of ``text`` (no special tokens); None when it tokenizes to nothing."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    return ids[0] if ids else None
