"""Stage datasets and the deterministic step plan (length-grouped, split across ranks, resumable).

Examples of each data task of ``neurorit.methods.TASKS`` (loss on the output tokens + EOS only, via ``neurorit.prompts.encode``):

- ``end_on_noise`` (stage 1): instruction + question + K irrelevant documents -> EOS only;
- ``evidence`` (stage 2): instruction + question + top-K documents -> evidence summary (``record.evidence``; else the
  sentences of the shown documents that hold a gold answer; else ``PromptBuilder.no_evidence()``);
- ``answer`` (the RetRobust-style baseline ``robust_sft``): question + top-K documents, or K noise-only documents for a seeded
  half of the records -> the first gold answer.

``StepPlan`` fixes, from (seed, epoch) alone, which examples every rank sees at every optimizer step: each epoch
is shuffled, cut into mega-batches of 32 global batches, sorted by length inside each so that padding stays small,
cut into global batches (an incomplete last one is dropped), and the global batches shuffled again. Rank ``r``
takes the ``r``-th contiguous slice of a global batch and cuts it into micro-batches. The consumed samples after
``step`` optimizer steps are ``step x batch_size``, so a resumed run continues with exactly the next batch.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import torch

from neurorit.errors import UserError
from neurorit.methods import TASKS
from neurorit.prompts import Encoded, PromptBuilder, TruncationCounter, encode
from neurorit.records import Passage, Record, irrelevant_passages, passage_has_answer
from neurorit.settings import docs_for_setting, record_rng

MEGA_BATCHES = 32
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def evidence_for(record: Record, docs, builder: PromptBuilder) -> str:
    """The stage-2 output: the record's evidence, else the answer-bearing sentences of ``docs``, else the fixed
    no-evidence sentence."""
    if record.evidence.strip():
        return record.evidence.strip()
    found = []
    for doc in docs:
        for sentence in _SENTENCE.split(doc.text.strip()):
            if passage_has_answer(Passage("", sentence), record.answers) and sentence not in found:
                found.append(sentence)
    return " ".join(found) if found else builder.no_evidence()


@dataclass(frozen=True)
class ExampleFormat:
    """How records become a stage's examples: the tokenizer, the prompt builder, passages per prompt, the
    token budget and the seed of the passage draws."""

    tokenizer: object
    builder: PromptBuilder
    num_docs: int
    max_length: int
    seed: int


def build_examples(task: str, records: list[Record], fmt: ExampleFormat) -> tuple[list[Encoded], TruncationCounter]:
    """Tokenized examples of one data task, one per record, in record order."""
    if task not in TASKS:
        raise ValueError(f"unknown data task {task!r}; use one of {', '.join(TASKS)}")
    builder, num_docs, seed = fmt.builder, fmt.num_docs, fmt.seed
    rng = random.Random(seed)
    counter = TruncationCounter()
    out = []
    for record in records:
        if task == "end_on_noise":
            parts = builder.stage1(record.question, irrelevant_passages(record, num_docs, pool=records, rng=rng))
        elif task == "evidence":
            docs = docs_for_setting(record, "top5", num_docs)
            parts = builder.stage2(record.question, docs, evidence_for(record, docs, builder))
        else:
            setting = "noise_only" if record_rng(record, f"robust{seed}").random() < 0.5 else "top5"
            parts = builder.answer_only(record.question, docs_for_setting(record, setting, num_docs),
                                        record.answers[0])
        try:
            enc = encode(fmt.tokenizer, parts, fmt.max_length)
        except ValueError as err:  # the instruction, question and output alone exceed max_length
            raise UserError(f"record {record.id}: {err}; raise data.max_length or shorten its output") from None
        counter.add(enc, record.id)
        out.append(enc)
    return out, counter


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (-100 on prompt and padding)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass(frozen=True)
class Batching:
    """How one optimizer step's global batch splits: over ``world`` ranks (this is ``rank``), in micro-batches."""

    batch_size: int
    micro_batch_size: int
    world: int = 1
    rank: int = 0


class StepPlan:
    """Deterministic assignment of examples to (step, rank, micro-batch); see the module docstring."""

    def __init__(self, lengths: list[int], batching: Batching, epochs: float, max_steps: int, seed: int):
        batch_size, micro_batch_size, world, rank = (batching.batch_size, batching.micro_batch_size, batching.world,
                                                     batching.rank)
        if batch_size % (micro_batch_size * world):
            raise UserError(f"batch_size {batch_size} must be a multiple of micro_batch_size {micro_batch_size} "
                            f"x world size {world}")
        self.lengths, self.batch_size, self.micro = lengths, batch_size, micro_batch_size
        self.world, self.rank, self.seed = world, rank, seed
        self.steps_per_epoch = len(lengths) // batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"{len(lengths)} training examples are fewer than one global batch ({batch_size})")
        total = math.ceil(epochs * self.steps_per_epoch)
        self.total_steps = min(total, max_steps) if max_steps > 0 else total
        self._epoch, self._batches = -1, []

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        mega = self.batch_size * MEGA_BATCHES
        grouped = []
        for start in range(0, len(order), mega):
            grouped += sorted(order[start:start + mega], key=lambda i: -self.lengths[i])
        batches = [grouped[i * self.batch_size:(i + 1) * self.batch_size] for i in range(self.steps_per_epoch)]
        rng.shuffle(batches)
        return batches

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's micro-batches (example indices) for optimizer step ``step`` (0-based)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        per_rank = self.batch_size // self.world
        mine = self._batches[index][self.rank * per_rank:(self.rank + 1) * per_rank]
        return [mine[i:i + self.micro] for i in range(0, per_rank, self.micro)]


def eval_batches(n: int, micro_batch_size: int, world: int, rank: int) -> list[tuple[list[int], float]]:
    """This rank's dev micro-batches as (indices, weight). Every rank gets the same number (ZeRO-3 needs equal
    forward counts): a rank short of data repeats example 0 with weight 0."""
    mine = list(range(rank, n, world))
    count = math.ceil(math.ceil(n / world) / micro_batch_size)
    out = []
    for b in range(count):
        chunk = mine[b * micro_batch_size:(b + 1) * micro_batch_size]
        out.append((chunk, 1.0) if chunk else ([0], 0.0))
    return out
