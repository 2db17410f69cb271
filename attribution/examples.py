"""Mining examples: records -> (relevant prompt, irrelevant prompt) IG inputs, with bad input caught per example.

The attribution target (``attribution/targets.py``, by its config name) gives the prompt (the verification prompt
for ``yes_prob`` / ``yes_no_margin``, the answer-only prompt for the answer targets) and the scored tokens; a
teacher-forced target's tokens are appended after the prompt (the prompt is cut to leave them room). With a chat
template (``PromptBuilder.chat``) the prompts are user turns that end with the assistant header, and the scored
word is the assistant turn's first word, without a leading space (``PromptBuilder.yes_word`` /
``output_prefix``). The query-only version of the same prompt is the ``query`` baseline. A passage that makes the
prompt longer than the context is cut (and counted); an empty passage, an answer with no token, or a question that
does not fit even without the passage marks the example as skipped (never stops the run).

``offtopic_mining_pairs`` builds the pairs as the release does (docs/DESIGN.md §2 mining data, issue 19): the
relevant passage holds the gold answer; the irrelevant one is another question's answer-bearing passage, off
topic: it never contains this question's gold answer, and, when records name their entity (``meta.entity``), it
is about another entity and never names this one. Seeded: the same records and seed give the same pairs.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Optional

import torch

from attribution.ig_common import IGInput
from attribution.stats import EMPTY_PASSAGE, NO_ANSWER_TOKEN, OK, TOO_LONG
from attribution import targets
from neurorit.errors import UserError
from neurorit.prompts import PromptBuilder, encode
from neurorit.records import Passage, Record, passage_has_answer, relevant_passages

DONOR_TRIES = 64  # random donors tried per question before a deterministic scan of all of them


@dataclass
class MiningExample:
    index: int
    id: str
    status: int
    truncated: int = 0  # prompts whose passage was cut to fit
    inputs: Optional[tuple[IGInput, IGInput]] = None  # relevant, irrelevant (None unless status is OK)


class ExampleBuilder:
    """Turns mining pairs into IG inputs for one tokenizer, prompt builder, attribution target (its config name),
    baseline and IG algorithm (a target the algorithm cannot read is refused here, in one line)."""

    def __init__(self, tokenizer, prompts: PromptBuilder, target: str, baseline: str, max_length: int,
                 algorithm: str = "fast"):
        self.tokenizer, self.baseline, self.max_length = tokenizer, baseline, max_length
        self.prompts = prompts
        self.target = targets.get(target)
        self.target.check(tokenizer, prompts, algorithm)

    def _ids(self, parts, room: int = 0) -> tuple[torch.Tensor, bool]:
        enc = encode(self.tokenizer, parts, self.max_length - room, add_eos=False, with_output=False)
        return torch.tensor(enc.input_ids, dtype=torch.long), enc.truncated

    def build(self, index: int, record, relevant, irrelevant) -> MiningExample:
        ex = MiningExample(index, record.id, OK)
        answer = record.answers[0] if record.answers else ""
        spoken = answer.strip() and targets.token_ids(self.tokenizer, self.prompts.output_prefix + answer.strip())
        target = self.target.for_answer(self.tokenizer, self.prompts, answer) if spoken else None
        if target is None:  # an answer with no token is skipped whatever the target (the YES targets show it too)
            ex.status = NO_ANSWER_TOKEN
            return ex
        if not relevant.text.strip() or not irrelevant.text.strip():
            ex.status = EMPTY_PASSAGE
            return ex
        forced = torch.tensor(target.continuation, dtype=torch.long)
        try:
            base = None
            if self.baseline == "query":
                base, _ = self._ids(self.target.prompt(self.prompts, record.question, answer, None))
            inputs = []
            for passage in (relevant, irrelevant):
                ids, cut = self._ids(self.target.prompt(self.prompts, record.question, answer, passage), len(forced))
                ex.truncated += int(cut)
                inputs.append(IGInput(torch.cat([ids, forced]), base, target))
        except ValueError:  # instruction + question alone exceed the context
            ex.status, ex.truncated = TOO_LONG, 0
            return ex
        ex.inputs = (inputs[0], inputs[1])
        return ex

    def pad_inputs(self) -> tuple[IGInput, IGInput]:
        """A stand-in for a rank with no example left: same passes, results thrown away (ZeRO-3 lockstep)."""
        token = targets.first_token(self.tokenizer, self.prompts.yes_word) or 0
        ids = torch.full((4,), token, dtype=torch.long)
        inp = IGInput(ids, ids.clone() if self.baseline == "query" else None, self.target.stand_in(token))
        return inp, inp


def longest_tail(tokenizer, prompts: PromptBuilder, names, pairs) -> int:
    """The most tokens a fast-IG row runs (``Target.reads``: the scaled token and the teacher-forced ones after it)
    over ``pairs`` for any of the targets ``names``; 1 when none scores a continuation."""
    reads = [1]
    for name in names:
        cls = targets.get(name)
        for record, _, _ in pairs:
            target = cls.for_answer(tokenizer, prompts, record.answers[0]) if record.answers else None
            reads.append(target.reads if target is not None else 1)
    return max(reads)


def examples_digest(pairs) -> str:
    """Hash of what is mined (ids, question, answers, both passages) for the shard run fingerprint."""
    h = hashlib.sha256()
    for record, rel, irr in pairs:
        h.update(json.dumps([record.id, record.question, record.answers, rel.text, irr.text]).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ pairs
def gold_passage(record: Record) -> Optional[Passage]:
    """The first passage (best ranked) that holds the gold answer and has text, or None."""
    for p in relevant_passages(record):
        if p.text.strip() and passage_has_answer(p, record.answers):
            return p
    return None


def _mentions(passage: Passage, words: list[str]) -> bool:
    """Whether the passage's own text (not its ``has_answer`` flag) contains any of ``words`` (normalized)."""
    return passage_has_answer(Passage(passage.title, passage.text), [w for w in words if w and w.strip()])


def entity_of(record: Record) -> str:
    return str(record.meta.get("entity") or "").strip()


def is_offtopic(record: Record, donor: Record, passage: Passage) -> bool:
    """``passage`` (from ``donor``) can be ``record``'s irrelevant passage: another question, non-empty, without
    ``record``'s gold answer, and, when the entity is known, about another entity and not naming it."""
    if donor.id == record.id or not passage.text.strip() or _mentions(passage, record.answers):
        return False
    entity = entity_of(record)
    return not entity or (entity_of(donor) != entity and not _mentions(passage, [entity]))


def _donor(i: int, records: list[Record], golds: list[Optional[Passage]], rng: random.Random) -> Optional[Passage]:
    """An off-topic gold passage of another question: up to ``DONOR_TRIES`` seeded random picks, then a scan
    from a seeded start, so a valid donor is always found when one exists."""
    n = len(records)
    ok = (lambda j: j != i and golds[j] is not None and is_offtopic(records[i], records[j], golds[j]))
    for _ in range(min(DONOR_TRIES, n)):
        j = rng.randrange(n)
        if ok(j):
            return golds[j]
    start = rng.randrange(n)
    for k in range(n):
        if ok((start + k) % n):
            return golds[(start + k) % n]
    return None


def offtopic_mining_pairs(records: list[Record], rng_seed: int = 0,
                          limit: int = -1) -> list[tuple[Record, Passage, Passage]]:
    """Per question with an answer-bearing passage: (record, that passage, an off-topic passage of another
    question); at most ``limit`` pairs when ``limit > 0``; questions without a gold passage or any valid donor
    are left out."""
    golds = [gold_passage(r) for r in records]
    rng = random.Random(rng_seed)
    pairs = []
    for i, record in enumerate(records):
        if 0 < limit <= len(pairs):
            break
        if golds[i] is None:
            continue
        donor = _donor(i, records, golds, rng)
        if donor is not None:
            pairs.append((record, golds[i], donor))
    return pairs
