"""Mining examples: records -> (relevant prompt, irrelevant prompt) IG inputs, with bad input caught per example.

Target ``yes_prob`` uses the verification prompt (passage, question, proposed gold answer; reply YES/NO) and the
first token of the style's YES word; target ``answer_logprob`` uses the answer-only prompt and the first token
of the gold answer. With a chat template (``PromptBuilder.chat``) both prompts are user turns that end with the
assistant header, and the target token is the first token of the assistant turn: the YES word and the answer
without a leading space (``PromptBuilder.yes_word`` / ``target_prefix``). The query-only version of the same prompt is the ``query`` baseline. A passage that makes
the prompt longer than the context is cut (and counted); an empty passage, an answer with no token, or a
question that does not fit even without the passage marks the example as skipped (never stops the run).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Optional

import torch

from attribution.ig_common import IGInput
from attribution.stats import EMPTY_PASSAGE, NO_ANSWER_TOKEN, OK, TOO_LONG
from attribution.targets import Target, first_token
from neurorit.errors import UserError
from neurorit.prompts import PromptBuilder, encode


@dataclass
class MiningExample:
    index: int
    id: str
    status: int
    truncated: int = 0  # prompts whose passage was cut to fit
    inputs: Optional[tuple[IGInput, IGInput]] = None  # relevant, irrelevant (None unless status is OK)


class ExampleBuilder:
    """Turns mining pairs into IG inputs for one tokenizer, prompt builder, target and baseline."""

    def __init__(self, tokenizer, prompts: PromptBuilder, target: str, baseline: str, max_length: int):
        self.tokenizer, self.target, self.baseline, self.max_length = tokenizer, target, baseline, max_length
        self.prompts = prompts
        self.yes_id = first_token(tokenizer, self.prompts.yes_word)
        if target == "yes_prob" and self.yes_id is None:
            raise UserError(f"the tokenizer gives no token for the YES word {self.prompts.yes_word!r}")

    def _parts(self, question: str, answer: str, passage):
        if self.target == "yes_prob":
            return self.prompts.mining(question, answer, passage)
        return self.prompts.answer_only(question, [passage] if passage is not None else [])

    def _ids(self, parts) -> tuple[torch.Tensor, bool]:
        enc = encode(self.tokenizer, parts, self.max_length, add_eos=False, with_target=False)
        return torch.tensor(enc.input_ids, dtype=torch.long), enc.truncated

    def build(self, index: int, record, relevant, irrelevant) -> MiningExample:
        ex = MiningExample(index, record.id, OK)
        answer = record.answers[0] if record.answers else ""
        answer_id = first_token(self.tokenizer, self.prompts.target_prefix + answer.strip()) if answer.strip() else None
        if answer_id is None:
            ex.status = NO_ANSWER_TOKEN
            return ex
        if not relevant.text.strip() or not irrelevant.text.strip():
            ex.status = EMPTY_PASSAGE
            return ex
        target = Target(self.target, self.yes_id if self.target == "yes_prob" else answer_id)
        try:
            base = None
            if self.baseline == "query":
                base, _ = self._ids(self._parts(record.question, answer, None))
            inputs = []
            for passage in (relevant, irrelevant):
                ids, cut = self._ids(self._parts(record.question, answer, passage))
                ex.truncated += int(cut)
                inputs.append(IGInput(ids, base, target))
        except ValueError:  # instruction + question alone exceed the context
            ex.status, ex.truncated = TOO_LONG, 0
            return ex
        ex.inputs = (inputs[0], inputs[1])
        return ex

    def pad_inputs(self) -> tuple[IGInput, IGInput]:
        """A stand-in for a rank with no example left: same passes, results thrown away (ZeRO-3 lockstep)."""
        ids = torch.full((4,), self.yes_id if self.yes_id is not None else 0, dtype=torch.long)
        inp = IGInput(ids, ids.clone() if self.baseline == "query" else None, Target(self.target, int(ids[0])))
        return inp, inp


def examples_digest(pairs) -> str:
    """Hash of what is mined (ids, question, answers, both passages) for the shard run fingerprint."""
    h = hashlib.sha256()
    for record, rel, irr in pairs:
        h.update(json.dumps([record.id, record.question, record.answers, rel.text, irr.text]).encode())
    return h.hexdigest()
