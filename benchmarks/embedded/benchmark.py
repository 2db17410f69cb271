"""The embedded RAG benchmark: a seeded QA set over the synthetic world, ranked by a real BM25 retriever.

Per question (``E R ?``): a gold passage, hard distractors (same relation / other entity, same entity / other
relation, a near-duplicate of the gold passage with another entity and value), random irrelevant passages, and
a counterfactual passage (same entity and relation, another value) kept apart in ``counterfactual_ctxs``. BM25
over the whole corpus ranks each question's candidates, so the stored ``ctxs`` (best first, with scores) make a
natural top-5. Half the questions ask *world facts* (fixed, memorised by the base model), half *fresh facts*
(re-sampled per question; only readable from the documents). World (entity, relation) pairs are split
between train/dev/test, and fresh instances are unique, so no test question instance is seen in training.

    python -m benchmarks.embedded.benchmark --config configs/embedded.yaml     # writes data.{train,dev,test}_file
"""
from __future__ import annotations

import os
import random
from typing import Optional

from neurorit.config import ExperimentConfig, parse_args
from neurorit.errors import main_guard
from benchmarks.embedded.bm25 import BM25
from neurorit.records import Passage, Record, write_records
from neurorit.run_layout import CONFIG
from benchmarks.embedded.world import RELATION_VALUES, RELATIONS, Fact, World

SPLIT_FRACTIONS = {"train": 0.7, "dev": 0.15, "test": 0.15}
N_SAME_RELATION, N_RANDOM = 2, 4


def _doc(facts: list[Fact], role: str, has_answer: bool) -> Passage:
    return Passage(title=facts[0].entity, text=" ".join(f.sentence() for f in facts), has_answer=has_answer, role=role)


class QuestionMaker:
    """Builds one question's candidate passages from the world (no ranking yet)."""

    def __init__(self, world: World, rng: random.Random):
        self.world, self.rng = world, rng

    def _fact_about(self, entity: str, relation: str, fresh: bool, avoid_value: Optional[str] = None) -> Fact:
        if not fresh and (entity, relation) in self.world.facts:
            return Fact(entity, relation, self.world.facts[(entity, relation)])
        values = [v for v in RELATION_VALUES[relation] if v != avoid_value]
        return Fact(entity, relation, self.rng.choice(values))

    def _other_entity(self, fresh: bool, avoid: str) -> str:
        pool = self.world.fresh_entities if fresh else self.world.world_entities
        while True:
            e = self.rng.choice(pool)
            if e != avoid:
                return e

    def _extra(self, entity: str, avoid_rel: str, fresh: bool) -> Fact:
        rels = self.world.entity_relations.get(entity) if not fresh else None
        rel = self.rng.choice([r for r in (rels or RELATIONS) if r != avoid_rel])
        return self._fact_about(entity, rel, fresh)

    def make(self, qid: str, kind: str, entity: str, relation: str) -> Record:
        rng, fresh = self.rng, kind == "fresh"
        gold = self._fact_about(entity, relation, fresh)
        gold_facts = [gold] + ([self._extra(entity, relation, fresh)] if rng.random() < 0.5 else [])
        rng.shuffle(gold_facts)
        pool = [_doc(gold_facts, "gold", True)]
        for _ in range(N_SAME_RELATION):
            e2 = self._other_entity(fresh, entity)
            pool.append(_doc([self._fact_about(e2, relation, fresh, avoid_value=gold.value)], "same_relation", False))
        same_ent = [self._extra(entity, relation, fresh)]
        if rng.random() < 0.5:
            extra = self._extra(entity, relation, fresh)
            if extra.relation != same_ent[0].relation:
                same_ent.append(extra)
        pool.append(_doc(same_ent, "same_entity", False))
        # near-duplicate: the gold passage's shape and wording with another entity and another answer
        e3 = self._other_entity(True, entity)
        near = [Fact(e3, f.relation, self.world.other_value(f.relation, gold.value, rng) if f.relation == relation
                     else f.value) for f in gold_facts]
        pool.append(_doc(near, "near_duplicate", False))
        for _ in range(N_RANDOM):
            e4 = self._other_entity(rng.random() < 0.5, entity)
            rel = rng.choice([r for r in RELATIONS if r != relation])
            pool.append(_doc([self._fact_about(e4, rel, True)], "random", False))
        cf = Fact(entity, relation, self.world.other_value(relation, gold.value, rng))
        return Record(id=qid, question=f"{entity} {relation} ?", answers=[gold.value], ctxs=pool,
                      evidence=gold.sentence(), counterfactual_ctxs=[_doc([cf], "counterfactual", False)],
                      meta={"kind": kind, "entity": entity, "relation": relation})


def split_world_pairs(world: World, rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    pairs = sorted(world.facts)
    rng.shuffle(pairs)
    n = len(pairs)
    a = int(n * SPLIT_FRACTIONS["train"])
    b = a + int(n * SPLIT_FRACTIONS["dev"])
    return {"train": pairs[:a], "dev": pairs[a:b], "test": pairs[b:]}


def build_benchmark(seed: int = 0, n_questions: int = 4000) -> dict[str, list[Record]]:
    """All splits, deterministic in ``seed``; half world-fact and half fresh-fact questions per split."""
    world = World(seed)
    rng = random.Random(seed + 1)
    maker = QuestionMaker(world, rng)
    world_pairs = split_world_pairs(world, rng)
    splits: dict[str, list[Record]] = {}
    seen_fresh: set[tuple[str, str, str]] = set()
    for split, frac in SPLIT_FRACTIONS.items():
        n = int(n_questions * frac)
        records = []
        for i in range(n):
            qid = f"{split}-{i:05d}"
            if i % 2 == 0:
                e, r = world_pairs[split][(i // 2) % len(world_pairs[split])]
                records.append(maker.make(qid, "world", e, r))
            else:
                while True:
                    e, r = rng.choice(world.fresh_entities), rng.choice(RELATIONS)
                    rec = maker.make(qid, "fresh", e, r)
                    key = (e, r, rec.answers[0])
                    if key not in seen_fresh:
                        seen_fresh.add(key)
                        records.append(rec)
                        break
        splits[split] = records
    _rank_all(splits)
    return splits


def _rank_all(splits: dict[str, list[Record]]) -> None:
    """Score every question's candidates with BM25 over the whole corpus; store them best first."""
    corpus = [p.text for recs in splits.values() for r in recs for p in r.ctxs]
    bm25 = BM25(corpus)
    for recs in splits.values():
        for r in recs:
            order = bm25.rank(r.question, [p.text for p in r.ctxs])
            r.ctxs = [Passage(**{**r.ctxs[i].__dict__, "score": round(s, 4)}) for i, s in order]
            for p in r.counterfactual_ctxs:
                p.score = round(bm25.score(r.question, p.text), 4)


def write_benchmark(cfg: ExperimentConfig) -> dict[str, str]:
    splits = build_benchmark(cfg.data.benchmark_seed, cfg.data.benchmark_questions)
    paths = {"train": cfg.data.train_file, "dev": cfg.data.dev_file, "test": cfg.data.test_file}
    for split, path in paths.items():
        write_records(splits[split], path)
    return paths


@main_guard
def main(argv=None) -> None:
    _, cfg = parse_args("Build the embedded benchmark (train/dev/test JSONL in the records schema).", argv)
    paths = write_benchmark(cfg)
    for split, path in paths.items():
        print(f"{split}: {path} ({sum(1 for _ in open(path))} questions)")
    from neurorit.config import save_config

    save_config(cfg, os.path.join(os.path.dirname(paths["train"]) or ".", CONFIG))


if __name__ == "__main__":
    main()
