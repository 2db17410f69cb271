"""The English RAG benchmark: real facts a pretrained model may know, made-up facts it can only read, in plain
English passages ranked by a real BM25 library (``rank_bm25``).

Per question: a gold passage (the fact in one of several sentence templates, sometimes with a true side fact
or another fact about the same entity), hard distractors of the same shape (two passages stating the *same relation* for other
entities; one about the *same entity* without the answer; a *near-duplicate* of the gold passage with a made-up
entity and another value), four random passages (other entities, other relations), and a *counterfactual*
passage (same entity and relation, another value) kept apart in ``counterfactual_ctxs``. BM25 over the whole
corpus scores every question's candidates, stored best first with their scores.

Half the questions ask *real facts* (``benchmarks/english/facts.py``: capitals and demonyms from
``countryinfo``, elements by symbol from ``periodictable``), half *fresh facts* (made-up entities and values).
A closed-book probe of the base model (``model.path``; a phrasing of its own per relation, not the benchmark's
question; greedy; chat template per ``data.chat_template``) labels every real fact known (answered right) or
unknown:
``meta.kind`` is ``known`` / ``unknown`` / ``fresh`` (``real`` when built with ``--no-probe``), ``meta.known``
the label, so evaluation reports per label. Probe results are cached next to the records
(``probe_cache.json``, keyed by the model's files and the probe phrasing).

Seeded; real facts are split between train/dev/test by entity, fresh entities are unique per question, so the
splits share no question instance (and no real entity).

    python -m benchmarks.english.benchmark --config configs/smollm2.yaml             # writes data.{train,dev,test}_file
    python -m benchmarks.english.benchmark --config configs/smollm2.yaml --no-probe  # no model needed
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

from benchmarks.english.facts import (FRESH_RELATIONS, FRESH_SUBJECT, FRESH_VALUE, NEAR_DUPLICATE_KINDS, PROBES,
                                      QUESTIONS, VALUE_IS_GROUP, NameMaker, RealFact, passage_title, real_facts,
                                      sentence, taken_names)
from neurorit import runtime
from neurorit.config import DataConfig, ExperimentConfig, parse_args, save_config
from neurorit.errors import UserError, main_guard
from neurorit.files import atomic_write_text
from neurorit.metrics import match
from neurorit.prompts import DEFAULT_CHAT_DATE
from neurorit.records import Passage, Record, passage_has_answer, write_records
from neurorit.run_layout import CONFIG

# test: >= 100 facts SmolLM2 knows (seed 0, 2218 questions: 129)
SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = (0.5, 0.15, 0.35)  # the default of data.benchmark_fractions
N_SAME_RELATION, N_RANDOM = 2, 4
GOLD_SIDE = 0.3  # chance of each extra sentence in a passage (another relation, a side fact): 1-3 sentences
PROBE_MAX_NEW_TOKENS = 16
_WORD = re.compile(r"\w+")
# side facts of made-up entities (besides their relations): a kind -> templates with {e} and a value list
FRESH_SIDE = {
    "person": ("{e} works as a {v}.", "painter teacher pilot engineer farmer doctor writer sailor".split()),
    "company": ("{e} makes {v}.", "bicycles lamps shoes radios furniture paper toys boats".split()),
    "country": ("{e} is known for its {v}.", "mountains lakes forests beaches rivers deserts islands valleys".split()),
}
RELATIONS_OF = {kind: [r for r in FRESH_RELATIONS if FRESH_SUBJECT[r] == kind] for kind in FRESH_SIDE}


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class Entity:
    """A made-up entity: its kind, name and value per relation (one consistent profile per question)."""

    kind: str
    name: str
    values: dict
    side: str


class Builder:
    def __init__(self, seed: int, facts: list[RealFact]):
        self.rng = random.Random(seed)
        self.facts = facts
        self.names = NameMaker(random.Random(seed + 7), taken_names(facts))

    # ------------------------------------------------------------------ made-up entities and passages
    def entity(self, kind: str) -> Entity:
        values = {r: self.names.make(FRESH_VALUE[r]) for r in RELATIONS_OF[kind]}
        tpl, pool = FRESH_SIDE[kind]
        name = self.names.make(kind)
        v = self.rng.choice(pool)
        side = tpl.format(e=name, v=v).replace(f" a {v}", f" an {v}" if v[0] in "aeiou" else f" a {v}")
        return Entity(kind, name, values, side)

    def _fresh_doc(self, ent: Entity, relations: list[str], role: str, side: bool) -> Passage:
        sents = [sentence(r, ent.name, ent.values[r], self.rng.randrange(3)) for r in relations]
        if side:
            sents.append(ent.side)
        self.rng.shuffle(sents)
        return Passage(title=ent.name, text=" ".join(sents), role=role)

    def _real_doc(self, fact: RealFact, role: str, value: Optional[str] = None, n_side: Optional[int] = None) -> Passage:
        side = list(fact.side)
        self.rng.shuffle(side)
        n_side = (int(self.rng.random() < GOLD_SIDE) if side else 0) if n_side is None else min(n_side, len(side))
        sents = [sentence(fact.relation, fact.entity, value or fact.value, self.rng.randrange(3))] + side[:n_side]
        self.rng.shuffle(sents)
        return Passage(title=passage_title(fact, value or fact.value), text=" ".join(sents), role=role)

    def _random_docs(self, avoid: set[str], pool: list[RealFact], n: int) -> list[Passage]:
        out = []
        for _ in range(n):
            if self.rng.random() < 0.5:
                cands = [f for f in pool if f.relation not in avoid]
                if cands:
                    out.append(self._real_doc(self.rng.choice(cands), "random"))
                    continue
            kind = self.rng.choice(sorted(FRESH_SIDE))
            ent = self.entity(kind)
            rels = [r for r in RELATIONS_OF[kind] if r not in avoid] or RELATIONS_OF[kind]
            out.append(self._fresh_doc(ent, [self.rng.choice(rels)], "random", side=self.rng.random() < 0.5))
        return out

    def _near_duplicate(self, gold: Passage, entity: str, answer: str, kind: str, value_kind: str) -> Passage:
        """The gold passage's words with a made-up entity of the same kind and another (made-up) answer."""
        twin = self.names.make(kind)
        if value_kind == "demonym":
            value = twin + ("n" if twin.endswith("a") else "ian")
        else:
            value = self.names.make(value_kind)
        def swap(text: str) -> str:
            for a, v in ((answer, value), (answer[:1].upper() + answer[1:], value[:1].upper() + value[1:])):
                text = text.replace(a, "\x00" + v + "\x00")
            parts = text.split("\x00")  # values sit at odd positions; rename the entity elsewhere only
            pat = re.compile(r"(?<!\w)" + re.escape(entity) + r"(?!\w)")
            return "".join(p if i % 2 else pat.sub(twin, p) for i, p in enumerate(parts))
        return Passage(title=swap(gold.title), text=swap(gold.text), role="near_duplicate")

    # ------------------------------------------------------------------------------------ questions
    def real_question(self, qid: str, fact: RealFact, pool: list[RealFact], known: Optional[bool]) -> Record:
        rng = self.rng
        gold = self._real_doc(fact, "gold")
        docs = [gold]
        same = [f for f in pool if f.relation == fact.relation and f.group != fact.group]
        n_same = N_SAME_RELATION + (1 if fact.relation == "element" else 0)
        for f in rng.sample(same, min(n_same, len(same))):
            docs.append(self._real_doc(f, "same_relation"))
        if fact.relation != "element":  # same country, another relation (an element's side facts name the answer)
            others = ([] if fact.relation in VALUE_IS_GROUP else  # every other fact of the country names it
                      [f for f in pool if f.group == fact.group and f.relation != fact.relation
                       and f.relation not in VALUE_IS_GROUP])
            if others:
                docs.append(self._real_doc(rng.choice(others), "same_entity", n_side=1))
            elif fact.side:
                docs.append(Passage(title=passage_title(fact, fact.value), text=" ".join(fact.side),
                                    role="same_entity"))
        docs.append(self._near_duplicate(gold, fact.entity, fact.value, *NEAR_DUPLICATE_KINDS[fact.relation]))
        docs += self._random_docs({fact.relation}, [f for f in pool if f.group != fact.group], N_RANDOM)
        cf_value = rng.choice([f.value for f in same]) if same else self.names.make("city")
        cf = self._real_doc(fact, "counterfactual", value=cf_value, n_side=0)
        label = "real" if known is None else ("known" if known else "unknown")
        meta = {"kind": label, "known": known, "relation": fact.relation, "entity": fact.entity,
                "source": fact.source,
                "counterfactual_answer": cf_value}
        evidence = sentence(fact.relation, fact.entity, fact.value, 0)
        return self._record(qid, QUESTIONS[fact.relation].format(e=fact.entity), fact.value, docs, cf, evidence, meta)

    def fresh_question(self, qid: str, pool: list[RealFact]) -> Record:
        rng = self.rng
        relation = rng.choice(FRESH_RELATIONS)
        kind = FRESH_SUBJECT[relation]
        ent = self.entity(kind)
        answer = ent.values[relation]
        extra = [r for r in RELATIONS_OF[kind] if r != relation]
        gold_rels = [relation] + ([rng.choice(extra)] if extra and rng.random() < GOLD_SIDE else [])
        gold = self._fresh_doc(ent, gold_rels, "gold", side=rng.random() < GOLD_SIDE)
        docs = [gold]
        for _ in range(N_SAME_RELATION):
            docs.append(self._fresh_doc(self.entity(kind), [relation], "same_relation", side=rng.random() < 0.5))
        same_ent = [r for r in extra if r not in gold_rels] or extra
        docs.append(self._fresh_doc(ent, same_ent[:1], "same_entity", side=True) if same_ent else
                    Passage(title=ent.name, text=ent.side, role="same_entity"))
        docs.append(self._near_duplicate(gold, ent.name, answer, kind, FRESH_VALUE[relation]))
        docs += self._random_docs({relation}, pool, N_RANDOM)
        cf_value = self.names.make(FRESH_VALUE[relation])
        cf_ent = Entity(kind, ent.name, {**ent.values, relation: cf_value}, ent.side)
        cf = self._fresh_doc(cf_ent, [relation], "counterfactual", side=False)
        meta = {"kind": "fresh", "known": None, "relation": relation, "entity": ent.name, "source": "made-up",
                "counterfactual_answer": cf_value}
        evidence = sentence(relation, ent.name, answer, 0)
        return self._record(qid, QUESTIONS[relation].format(e=ent.name), answer, docs, cf, evidence, meta)

    @staticmethod
    def _record(qid, question, answer, docs, cf, evidence, meta) -> Record:
        answers = [answer]
        kept = [docs[0]]
        for p in docs[1:]:  # a distractor that happens to hold the answer would not be a distractor
            if not passage_has_answer(Passage(p.title, p.text), answers):
                kept.append(p)
        for p in kept:
            p.has_answer = p.role == "gold"
        cfs = [c for c in [cf] if not passage_has_answer(Passage(c.title, c.text), answers)]
        for c in cfs:
            c.has_answer = False
        return Record(id=qid, question=question, answers=answers, ctxs=kept, evidence=evidence,
                      counterfactual_ctxs=cfs, meta=meta)


# ------------------------------------------------------------------------------------------------ splits
def split_facts(facts: list[RealFact], seed: int,
                fractions: Sequence[float] = SPLIT_FRACTIONS) -> dict[str, list[RealFact]]:
    """Real facts per split (train / dev / test ``fractions`` of the entities), by entity (a country's capital and
    demonym go to the same split). Moving a share between train and dev keeps the test entities."""
    groups = sorted({f.group for f in facts})
    random.Random(seed).shuffle(groups)
    a = int(len(groups) * fractions[0])
    b = a + int(len(groups) * fractions[1])
    where = {g: ("train" if i < a else "dev" if i < b else "test") for i, g in enumerate(groups)}
    out: dict[str, list[RealFact]] = {s: [] for s in SPLITS}
    for f in facts:
        out[where[f.group]].append(f)
    return out


def fact_key(f: RealFact) -> str:
    return f"{f.relation}|{f.entity}"


def build_benchmark(seed: int = 0, n_questions: int = 1000, labels: Optional[dict[str, bool]] = None,
                    fractions: Sequence[float] = SPLIT_FRACTIONS) -> dict[str, list[Record]]:
    """All splits, deterministic in ``seed`` and ``fractions`` (and ``labels``, the probe's known/unknown per
    ``fact_key``).

    Per split: ``int(n_questions x fraction)`` questions, half real facts (as many as the split has), the rest
    fresh, interleaved (real, fresh, real, ...)."""
    facts = real_facts()
    per_split = split_facts(facts, seed, fractions)
    b = Builder(seed + 1, facts)
    splits: dict[str, list[Record]] = {}
    for split, frac in zip(SPLITS, fractions):
        n = int(n_questions * frac)
        pool = per_split[split]
        chosen = list(pool)
        b.rng.shuffle(chosen)
        chosen = chosen[: n // 2]
        n_fresh = n - len(chosen)
        records: list[Record] = []
        for i in range(n):
            qid = f"{split}-{i:05d}"
            real_turn = i % 2 == 0 and chosen
            if real_turn or (not n_fresh and chosen):
                f = chosen.pop(0)
                known = None if labels is None else bool(labels.get(fact_key(f), False))
                records.append(b.real_question(qid, f, pool, known))
            else:
                n_fresh -= 1
                records.append(b.fresh_question(qid, pool))
        splits[split] = records
    rank_all(splits)
    return splits


def rank_all(splits: dict[str, list[Record]]) -> None:
    """BM25 (rank_bm25's Okapi) over every passage of every split; each question's candidates best first."""
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        raise UserError("the English benchmark needs the 'rank-bm25' package: .venv/bin/pip install 'rank-bm25>=0.2.2'"
                        " (or make setup)") from None
    corpus, spans = [], []
    for recs in splits.values():
        for r in recs:
            start = len(corpus)
            corpus += [tokenize(p.title + " " + p.text) for p in r.ctxs + r.counterfactual_ctxs]
            spans.append((r, start))
    bm25 = BM25Okapi(corpus)
    for r, start in spans:
        q = tokenize(r.question)
        n = len(r.ctxs)
        scores = bm25.get_batch_scores(q, list(range(start, start + n + len(r.counterfactual_ctxs))))
        order = sorted(range(n), key=lambda i: (-round(float(scores[i]), 4), i))
        r.ctxs = [Passage(**{**r.ctxs[i].__dict__, "score": round(float(scores[i]), 4)}) for i in order]
        for j, p in enumerate(r.counterfactual_ctxs):
            p.score = round(float(scores[n + j]), 4)


# ------------------------------------------------------------------------------------------ the probe
def _model_fingerprint(path: str) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name == "config.json":
            with open(full, "rb") as fh:
                h.update(fh.read())
        elif name.endswith((".safetensors", ".bin")):
            h.update(f"{name}:{os.path.getsize(full)}".encode())
    return h.hexdigest()[:16]


def probe_prompts(fact: RealFact) -> list[str]:
    return [p.format(e=fact.entity) for p in PROBES[fact.relation]]


def probe_known(model_path: str, facts: list[RealFact], cache_path: str, data: Optional[DataConfig] = None,
                batch_size: int = 32) -> dict[str, bool]:
    """Closed-book probe: ``{fact_key: known}``; known = the greedy answer is right under every ``PROBES``
    phrasing of the relation (not the benchmark's question), in the chat format ``data`` sets (``chat_template``,
    ``chat_template_file``, ``chat_date``). Cached per model and phrasing. ``model_path`` may be a Hub id
    (``model_patches.loading.resolve_model``)."""
    data = data or DataConfig()
    chat_mode, template_file, chat_date = data.chat_template, data.chat_template_file, data.chat_date
    from model_patches.loading import resolve_model

    try:
        model_path = resolve_model(model_path).path
    except UserError as err:
        raise UserError(f"the closed-book probe needs the base model at {model_path} (model.path): run "
                        f"`make real-model` first, or pass --no-probe to build without known/unknown labels "
                        f"({err})") from None
    if not os.path.isdir(model_path):
        raise UserError(f"the closed-book probe needs the base model at {model_path} (model.path): run "
                        f"`make real-model` first, or pass --no-probe to build without known/unknown labels")
    fingerprint = _model_fingerprint(model_path)
    chat = [chat_mode] if not template_file and chat_date == DEFAULT_CHAT_DATE else [chat_mode, template_file, chat_date]
    spec = hashlib.sha256(json.dumps([PROBES, PROBE_MAX_NEW_TOKENS, *chat]).encode()).hexdigest()[:12]
    cache: dict = {}
    if os.path.isfile(cache_path):
        try:
            with open(cache_path, encoding="utf-8") as fh:
                cache = json.load(fh)
        except (OSError, json.JSONDecodeError):
            cache = {}
    if cache.get("model") != fingerprint or cache.get("probe") != spec:
        cache = {"model": fingerprint, "model_path": model_path, "probe": spec, "facts": {}}
    todo = [f for f in facts if fact_key(f) not in cache["facts"]]
    if todo:
        texts = [t for f in todo for t in probe_prompts(f)]
        outputs = iter(_run_probe(model_path, texts, data, batch_size))
        for f in todo:
            outs = [next(outputs) for _ in probe_prompts(f)]
            right = [bool(match(o, [f.value])) for o in outs]
            cache["facts"][fact_key(f)] = {"outputs": outs, "right": right, "known": all(right)}
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        atomic_write_text(cache_path, json.dumps(cache, indent=1, ensure_ascii=False) + "\n")
    return {k: bool(v["known"]) for k, v in cache["facts"].items()}


def _run_probe(model_path: str, texts: list[str], data: DataConfig, batch_size: int) -> list[str]:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neurorit.prompts import chat_format
    from rag.generate import eos_ids_of, generate_all, pad_id_of

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    chat = chat_format(data.chat_template, tok, data.chat_template_file, data.chat_date)
    if chat is not None:
        prompts = [tok(chat.user_prefix + t + chat.user_suffix, add_special_tokens=False)["input_ids"] for t in texts]
        stop = [chat.stop_id]
    else:
        prompts = [tok(f"Question: {t}\nAnswer:")["input_ids"] for t in texts]
        stop = []
    eos = eos_ids_of(model, tok, stop)
    print(f"closed-book probe of {model_path}: {len(texts)} prompts", file=sys.stderr, flush=True)
    with tqdm(total=len(prompts), desc="closed-book probe", unit="prompt", file=sys.stderr) as bar:
        out = generate_all(model, prompts, PROBE_MAX_NEW_TOKENS, batch_size, eos, pad_id_of(tok, eos),
                           progress=bar.update)
    return [tok.decode(out[i], skip_special_tokens=True).strip() for i in range(len(texts))]


# ------------------------------------------------------------------------------------------------ entry
def write_benchmark(cfg: ExperimentConfig, probe: bool = True) -> dict[str, str]:
    """The benchmark's splits as records files; with ``probe``, the closed-book probe labels the real facts the
    splits hold (only those: ``data.benchmark_questions`` bounds the probe as it bounds the benchmark). The facts a
    build chooses do not depend on the labels, so labelling the built records equals building with the labels."""
    paths = {"train": cfg.data.train_file, "dev": cfg.data.dev_file, "test": cfg.data.test_file}
    splits = build_benchmark(cfg.data.benchmark_seed, cfg.data.benchmark_questions,
                             fractions=cfg.data.benchmark_fractions)
    if probe:
        cache = os.path.join(os.path.dirname(os.path.abspath(paths["train"])), "probe_cache.json")
        runtime.start(cfg.runtime, join_group=False)  # threads, seeds and kernels as every entry point sets them
        real = [r for records in splits.values() for r in records if r.meta.get("kind") == "real"]
        used = {(r.meta["relation"], r.meta["entity"]) for r in real}
        facts = [f for f in real_facts() if (f.relation, f.entity) in used]
        labels = probe_known(cfg.model.path, facts, cache, cfg.data)
        for r in real:
            known = bool(labels.get(f"{r.meta['relation']}|{r.meta['entity']}", False))
            r.meta.update(kind="known" if known else "unknown", known=known)
    for split, path in paths.items():
        write_records(splits[split], path)
    return paths


def _extra_args(parser) -> None:
    parser.add_argument("--no-probe", action="store_true",
                        help="skip the closed-book probe (no model needed): real facts get meta.kind 'real'")


@main_guard
def main(argv=None) -> None:
    args, cfg = parse_args("Build the English benchmark (train/dev/test JSONL in the records schema).", argv,
                           _extra_args)
    paths = write_benchmark(cfg, probe=not args.no_probe)
    from collections import Counter

    for split, path in paths.items():
        with open(path, encoding="utf-8") as fh:
            kinds = Counter(json.loads(line)["meta"]["kind"] for line in fh if line.strip())
        print(f"{split}: {path} ({sum(kinds.values())} questions: "
              + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + ")")
    save_config(cfg, os.path.join(os.path.dirname(paths["train"]) or ".", CONFIG))


if __name__ == "__main__":
    main()
