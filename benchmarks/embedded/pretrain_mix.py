"""The embedded base model's pre-training mix, sampled on the fly from the synthetic world.

Tasks (compact prompts): answer-only QA, two-step QA (evidence then answer), verification (passage, question,
proposed answer -> yes/no, the mining task), and evidence summaries. Contexts come from the benchmark's own
question maker. World-fact questions appear closed-book, with their gold passage, with an *updating* passage
whose value is the answer (so the reader learns to lean on documents), or with irrelevant passages of other
relations (answer from memory). Fresh-fact questions always carry their gold passage among distractors, so
they can only be answered by reading. A curriculum grows the number of documents from 1 to 5.

Every example is the full text (loss on all of it) with the answer span weighted more (``weights``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from benchmarks.embedded.benchmark import QuestionMaker
from neurorit.prompts import PromptBuilder, PromptParts
from neurorit.records import Passage
from benchmarks.embedded.world import RELATIONS, World

TASK_WEIGHTS = {"qa": 0.35, "two_step": 0.35, "verify": 0.22, "summarize": 0.08}
WORLD_SCENARIOS = {"closed": 0.35, "consistent": 0.25, "updating": 0.2, "irrelevant": 0.2}
IRRELEVANT_ROLES = ("random", "same_entity")


@dataclass
class Example:
    prompt: str
    output: str  # the part that carries the answer (weighted in the loss); EOS follows it


class PretrainMix:
    def __init__(self, world: World, seed: int, curriculum_steps: int = 300):
        self.world = world
        self.rng = random.Random(seed)
        self.maker = QuestionMaker(world, self.rng)
        self.builder = PromptBuilder("compact")
        self.curriculum_steps = curriculum_steps
        self.world_pairs = sorted(world.facts)

    def _max_docs(self, step: int) -> int:
        return min(5, 1 + step // self.curriculum_steps)

    def _pick(self, table: dict[str, float]) -> str:
        return self.rng.choices(list(table), weights=list(table.values()))[0]

    def _context(self, step: int):
        """(question, answer, docs, evidence) for one world- or fresh-fact question."""
        rng = self.rng
        n_docs = rng.randint(1, self._max_docs(step))
        if rng.random() < 0.5:
            e, r = rng.choice(self.world.fresh_entities), rng.choice(RELATIONS)
            rec = self.maker.make("pt", "fresh", e, r)
            gold = rec.ctxs[0]
            docs = [gold] + rng.sample(rec.ctxs[1:], n_docs - 1)
            answer, evidence = rec.answers[0], rec.evidence
        else:
            e, r = rng.choice(self.world_pairs)
            rec = self.maker.make("pt", "world", e, r)
            scenario = self._pick(WORLD_SCENARIOS)
            answer, evidence = rec.answers[0], rec.evidence
            if scenario == "closed":
                docs, evidence = [], ""
            elif scenario == "consistent":
                docs = [rec.ctxs[0]] + rng.sample(rec.ctxs[1:], n_docs - 1)
            elif scenario == "updating":
                cf = rec.counterfactual_ctxs[0]
                docs = [cf] + rng.sample(rec.ctxs[1:], n_docs - 1)
                answer = cf.text.split()[2]
                evidence = cf.text
            else:
                pool = [p for p in rec.ctxs if p.role in IRRELEVANT_ROLES]
                docs, evidence = rng.sample(pool, min(n_docs, len(pool))), ""
        rng.shuffle(docs)
        return rec.question, answer, docs, evidence, rec

    def sample(self, step: int) -> Example:
        task = self._pick(TASK_WEIGHTS)
        question, answer, docs, evidence, rec = self._context(step)
        b = self.builder
        if task == "qa":
            parts = b.answer_only(question, docs)
            return Example(parts.text(), answer)
        if task == "two_step":
            return Example(b.two_step(question, docs).text(), b.two_step_output(evidence, answer))
        if task == "summarize":
            return Example(b.stage2(question, docs, evidence).text(), evidence or b.no_evidence())
        return self._verify(rec)

    def _verify(self, rec) -> Example:
        """Verification: yes iff the passage states the proposed answer for the asked entity and relation."""
        rng, b = self.rng, self.builder
        gold: Passage = rec.ctxs[0]
        entity, relation = rec.meta["entity"], rec.meta["relation"]
        right = rec.answers[0]
        proposed = right if rng.random() < 0.5 else self.world.other_value(relation, right, rng)
        kind = rng.random()
        if kind < 0.45:
            passage = gold
        elif kind < 0.65:
            passage = rec.counterfactual_ctxs[0]
        elif kind < 0.85 or rec.meta["kind"] == "fresh":
            passage = rng.choice(rec.ctxs[1:])
        else:
            passage = None  # query-only prompt: a world fact is known from memory
        if passage is None:
            yes = proposed == right
        else:
            yes = f"{entity} {relation} {proposed} ." in passage.text
        parts: PromptParts = b.mining(rec.question, proposed, passage)
        return Example(parts.text(), b.yes_word if yes else b.style.no_word)
