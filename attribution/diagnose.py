"""Is a neuron map worth mining on this model and data? A forward-only separation probe of every attribution target.

    neurorit-diagnose --config configs/smollm2.yaml            (or: python -m attribution.diagnose --config ...)

On the mining split only (the pairs ``attribution/mine.py`` mines: ``mining.file`` or ``data.train_file``, at
most ``mining.num_examples`` questions), every registered attribution target (``attribution/targets.py``) is
computed, without gradients, on three prompts per question: with the relevant passage, with the irrelevant
(off-topic) one, and with no passage (the query-only prompt); targets whose inputs are prefixes of one
another (the same prompt) share one forward pass (``read_values``). Per target it reports the means, the share of
questions where relevant beats irrelevant, the standardized paired effect ``dz = mean(d) / sd(d)`` of
``d = F(relevant) - F(irrelevant)`` (0 when every difference is equal), and the with/without-passage contrast:
the share where the *irrelevant* passage beats no passage, and its ``dz`` (a target that rises with any passage
measures "a passage is there", not relevance).

The rule behind ``mining.target: auto`` (fixed): the target with the largest relevance ``dz`` among those
``mining.algorithm`` can run (``Target.check``). The verdict: that target separates when its ``dz`` is at least
``mining.min_separation`` and relevant beats irrelevant in more than half of the questions; otherwise a map mined
with any target is unlikely to hold relevance neurons. A map already mined whose relevant- or irrelevant-only group
differs between halves of the mining questions (half-split Jaccard below ``STABILITY_WARN``) turns "worth mining"
into "not yet worth training on: mine more questions". What the run folder already shows is quoted above the
verdict: a mined map's fill and half-split stability (``diagnostics.json``), and after ``scripts/demo.py``'s dev
selection, stage 1 with the mined irrelevant-only neurons against as many random ones at the chosen point
(``selection.json``). Writes ``diagnosis.json`` and ``diagnosis.txt`` into the mining folder (``RunLayout.mining``);
progress lines go to stderr while it runs. ``diagnosis.json`` keeps the probe's key (``probe_key``: model, dtype,
pairs, prompt settings, algorithm, the registered targets): mining with ``auto``, and this command run again,
reuse a probe of the same key instead of probing again (``reuse``; seconds).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass

import torch

from attribution import targets
from attribution.examples import ExampleBuilder, examples_digest
from attribution.diagnostics import STABILITY_WARN
from attribution.stats import OK
from neurorit.errors import UserError, main_guard
from neurorit.files import atomic_write_text
from neurorit.neuron_map import MAP_JSON
from neurorit.run_layout import MiningFiles, RunLayout

SIDES = ("relevant", "irrelevant", "no_passage")


@dataclass
class Separation:
    """One target's probe over the mining pairs."""

    target: str
    questions: int  # pairs the target could score
    usable: bool  # mining.algorithm can run it
    refusal: str  # why not, when not usable
    relevant: float  # means of F
    irrelevant: float
    no_passage: float
    relevant_wins: float  # share of questions with F(relevant) > F(irrelevant)
    dz: float  # paired effect of relevant - irrelevant
    passage_wins: float  # share with F(irrelevant) > F(no passage)
    passage_dz: float  # paired effect of irrelevant - no passage


def paired_effect(diffs: list[float]) -> float:
    """``mean / sd`` (sample sd) of paired differences; 0 with fewer than two or no spread."""
    if len(diffs) < 2:
        return 0.0
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    return mean / sd if sd > 0 else 0.0


@torch.no_grad()
def read_values(model, jobs: list[tuple[torch.Tensor, object]]) -> list[float]:
    """F of every ``(ids, target)`` job (ids = prompt + the target's continuation), forward only. Jobs whose ids
    are a prefix of another job's share its forward (attention is causal: the logits at a position do not depend
    on later tokens): one pass per distinct longest sequence, e.g. the YES-word targets on one verification prompt,
    or a first answer token and the whole answer on one answer prompt."""
    device = next(model.parameters()).device
    order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][0]))
    groups: list[tuple[torch.Tensor, list[int]]] = []  # (longest ids, the jobs it covers)
    for j in order:
        ids = jobs[j][0]
        home = next((g for g in groups if len(g[0]) >= len(ids) and torch.equal(g[0][:len(ids)], ids)), None)
        if home is None:
            groups.append((ids, [j]))
        else:
            home[1].append(j)
    values = [0.0] * len(jobs)
    for ids, members in groups:
        # logits from the first position any member reads to the end of the longest sequence
        keep = max(len(ids) - len(jobs[j][0]) + jobs[j][1].reads for j in members)
        logits = model(input_ids=ids.view(1, -1).to(device), use_cache=False, logits_to_keep=keep).logits
        for j in members:
            job_ids, target = jobs[j]
            end = keep - (len(ids) - len(job_ids))  # the job's last position, within the kept logits
            values[j] = float(target.value(logits[:, end - target.reads:end])[0])
    return values


def probe(model, builders: dict, pairs) -> dict[str, dict[str, list[float]]]:
    """F on the three prompts of every pair, per target that can score it: ``{target: {side: [values]}}``."""
    values = {name: {side: [] for side in SIDES} for name in builders}
    every = max(1, len(pairs) // 5)
    for i, pair in enumerate(pairs):
        jobs, owners = [], []
        for name, builder in builders.items():
            ex = builder.build(i, *pair)
            if ex.status == OK:
                rel, irr = ex.inputs
                forced = rel.input_ids[rel.scaled_position + 1:]
                for side, ids in zip(SIDES, (rel.input_ids, irr.input_ids, torch.cat([rel.baseline_ids, forced]))):
                    jobs.append((ids, rel.target))
                    owners.append((name, side))
        for (name, side), value in zip(owners, read_values(model, jobs)):
            values[name][side].append(value)
        if (i + 1) % every == 0 or i + 1 == len(pairs):
            print(f"diagnose: {i + 1}/{len(pairs)} questions", file=sys.stderr, flush=True)
    return values


def separation(name: str, values: dict[str, list[float]], refusal: str) -> Separation:
    rel, irr, none = (values[side] for side in SIDES)
    n = len(rel)
    mean = (lambda xs: sum(xs) / len(xs) if xs else 0.0)
    share = (lambda a, b: sum(x > y for x, y in zip(a, b)) / n if n else 0.0)
    return Separation(name, n, not refusal, refusal, mean(rel), mean(irr), mean(none), share(rel, irr),
                      paired_effect([a - b for a, b in zip(rel, irr)]), share(irr, none),
                      paired_effect([a - b for a, b in zip(irr, none)]))


def refusal_of(cls, tokenizer, prompts, algorithm: str) -> str:
    """Why ``mining.algorithm`` cannot mine with target ``cls`` here (its ``check``), or "" when it can."""
    try:
        cls.check(tokenizer, prompts, algorithm)
    except UserError as err:
        return str(err)
    return ""


def diagnose(model, tokenizer, prompts, pairs, cfg) -> list[Separation]:
    """Every registered target's separation on ``pairs`` (the config gives the context length and algorithm)."""
    builders, refused = {}, {}
    for name in targets.TARGETS:
        try:  # forward only: any target can be probed, also one the IG algorithm refuses
            builders[name] = ExampleBuilder(tokenizer, prompts, name, "query", cfg.data.max_length,
                                            algorithm="reference")
        except UserError as err:
            refused[name] = str(err)
    values = probe(model, builders, pairs) if builders else {}
    return [separation(name, {side: [] for side in SIDES}, refused[name]) if name in refused else
            separation(name, values[name], refusal_of(cls, tokenizer, prompts, cfg.mining.algorithm))
            for name, cls in targets.TARGETS.items()]


def probe_key(cfg, pairs) -> str:
    """What decides the probe's rows: the model (path, dtype), the mining pairs, the prompt settings, the IG
    algorithm (which targets are usable) and the registered targets."""
    d = cfg.data
    body = {"model": os.path.abspath(cfg.model.path), "dtype": cfg.model.dtype, "pairs": examples_digest(pairs),
            "prompt": [d.prompt_style, d.chat_template, d.max_length], "algorithm": cfg.mining.algorithm,
            "targets": list(targets.TARGETS)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]


def reuse(files, key: str, tokenizer, prompts, algorithm: str) -> list[Separation] | None:
    """The rows of a ``diagnosis.json`` in ``files`` written for the same ``probe_key``, else None; whether each
    target is usable is asked again (``refusal_of``: cheap, and this code's answer, not the writer's)."""
    if not os.path.isfile(files.diagnosis_json):
        return None
    with open(files.diagnosis_json) as fh:
        body = json.load(fh)
    if body.get("key") != key:
        return None
    rows = [Separation(**r) for r in body["targets"]]
    for row in rows:
        if row.questions:  # a target that built no example keeps its reason
            row.refusal = refusal_of(targets.TARGETS[row.target], tokenizer, prompts, algorithm)
            row.usable = not row.refusal
    return rows


def choose(rows: list[Separation]) -> Separation:
    """The rule of ``mining.target auto``: the largest relevance ``dz`` among the usable targets."""
    usable = [r for r in rows if r.usable and r.questions]
    if not usable:
        raise UserError("mining.target auto: no registered attribution target can be mined here (see diagnosis.txt)")
    return max(usable, key=lambda r: r.dz)


def verdict(best: Separation, min_dz: float, unstable: list[str] = ()) -> str:
    """One line: whether the chosen target separates relevant from irrelevant passages, and, for a map already
    mined, whether its groups hold between halves of the mining questions (``unstable``: the groups below
    ``STABILITY_WARN``)."""
    facts = f"dz {best.dz:.2f}, relevant ahead in {100 * best.relevant_wins:.1f}% of {best.questions} questions"
    if best.dz >= min_dz and best.relevant_wins > 0.5 and unstable:
        return (f"verdict: worth mining, not yet worth training on: {best.target} separates relevant from "
                f"irrelevant passages ({facts}), but the mined map's {', '.join(unstable)} differ between halves of "
                f"the mining questions (half-split Jaccard < {STABILITY_WARN}): mine more questions "
                f"(mining.num_examples) first")
    if best.dz >= min_dz and best.relevant_wins > 0.5:
        return f"verdict: worth mining: {best.target} separates relevant from irrelevant passages ({facts})"
    return (f"verdict: not worth mining: no target separates relevant from irrelevant passages on this model and "
            f"data (best {best.target}: {facts}; mining.min_separation {min_dz})")


def _number(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e-2 and x else f"{x:.4f}"


def summary_text(rows: list[Separation], best: Separation, cfg, facts: list[str], unstable: list[str] = ()) -> str:
    lines = [f"diagnose: {cfg.model.path}, {max(r.questions for r in rows)} mining questions (forward only; "
             f"no passage = the query-only prompt)",
             "| target | relevant | irrelevant | no passage | relevant > irrelevant | dz | irrelevant > no passage | "
             "dz | usable |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r.target} | {_number(r.relevant)} | {_number(r.irrelevant)} | {_number(r.no_passage)} | "
                     f"{100 * r.relevant_wins:.1f}% | {r.dz:.2f} | {100 * r.passage_wins:.1f}% | {r.passage_dz:.2f} | "
                     f"{'yes' if r.usable else 'no: ' + r.refusal} |")
    lines.append(f"rule (mining.target auto): the largest dz among the targets mining.algorithm {cfg.mining.algorithm} "
                 f"can run -> {best.target}")
    lines += facts
    lines.append(verdict(best, cfg.mining.min_separation, unstable))
    return "\n".join(lines)


def map_facts(mining_root: str) -> tuple[str, list[str]]:
    """The fill and half-split stability of a map already mined in ``mining_root`` (its ``diagnostics.json``), with
    the target it was mined with (``neuron_map.json``), and its groups that are unstable (Jaccard below
    ``STABILITY_WARN``); ``("", [])`` before mining."""
    diag_path, map_path = MiningFiles(mining_root).diagnostics, os.path.join(mining_root, MAP_JSON)
    if not (os.path.isfile(diag_path) and os.path.isfile(map_path)):
        return "", []
    with open(diag_path) as fh:
        diag = json.load(fh)
    with open(map_path) as fh:
        mined_with = json.load(fh).get("provenance", {}).get("mining", {}).get("target", "?")
    fill = ", ".join(f"{g} {v['got']}/{v['requested']}" for g, v in diag["fill"].items())
    groups = diag["stability"]["groups"]
    stable = ", ".join(f"{g} {v['jaccard']:.2f}" for g, v in groups.items())
    unstable = [g for g, v in groups.items() if diag["fill"][g]["requested"] and v["jaccard"] < STABILITY_WARN]
    return f"the map in {mining_root} (mined with {mined_with}): fill {fill}; half-split Jaccard {stable}", unstable


def stage1_facts(record_path: str) -> str:
    """Stage 1 with the mined irrelevant-only neurons against as many random ones, at the point the dev rule chose
    (``selection.json``'s ``stage1.mined_vs_random``, from ``scripts/demo.py``), or "" before that run."""
    if not os.path.isfile(record_path):
        return ""
    with open(record_path) as fh:
        stage1 = json.load(fh).get("stage1", {})
    found = stage1.get("mined_vs_random")
    if not found:
        return ""
    point, (lo, hi) = stage1["chosen"], found["ci95"]
    return (f"stage 1 at the dev-chosen point ({point['max_steps']} steps, lr {point['lr']:g}; {record_path}): "
            f"noise-only minus gold-only end share, mined {found['mined_gap']:.3f} vs random {found['random_gap']:.3f}"
            f" on {found['n']} dev questions, difference {found['difference']:+.3f} (95% CI {lo:+.3f} to {hi:+.3f})")


def write(rows: list[Separation], best: Separation, cfg, files, key: str) -> str:
    """``diagnosis.json`` (with the probe's ``key``) then ``diagnosis.txt`` (the text also printed, with what the
    run folder already shows: the map's fill and stability, stage 1 mined vs random); returns the text."""
    mined, unstable = map_facts(files.root)
    facts = [f for f in (mined, stage1_facts(RunLayout.of(cfg).selection_record)) if f]
    text = summary_text(rows, best, cfg, facts, unstable)
    body = {"key": key, "targets": [asdict(r) for r in rows], "chosen": best.target,
            "rule": "largest dz among usable targets",
            "min_separation": cfg.mining.min_separation, "verdict": text.splitlines()[-1]}
    atomic_write_text(files.diagnosis_json, json.dumps(body, indent=1) + "\n")
    atomic_write_text(files.diagnosis, text + "\n")
    print(text)
    return text


@main_guard
def main(argv=None) -> None:
    from attribution.examples import offtopic_mining_pairs
    from model_patches import load_tokenizer
    from model_patches.loading import load_causal_lm
    from neurorit import runtime
    from neurorit.config import parse_args
    from neurorit.prompts import prompt_builder
    from neurorit.records import mining_records

    args, cfg = parse_args("Probe every attribution target on the mining split (forward only) and say whether a "
                           "neuron map is worth mining (docs/DESIGN.md §2).", argv)
    runtime.start(cfg.runtime, args.local_rank, join_group=False)
    m = cfg.mining
    pairs = offtopic_mining_pairs(mining_records(cfg), cfg.runtime.seed, limit=m.num_examples)
    if not pairs:
        raise UserError(f"no mining pairs in {m.file or cfg.data.train_file}")
    tokenizer = load_tokenizer(cfg.model.path)
    prompts, files, key = prompt_builder(cfg.data, tokenizer), RunLayout.of(cfg).mining, probe_key(cfg, pairs)
    rows = reuse(files, key, tokenizer, prompts, m.algorithm)
    if rows:  # the same probe, done: the verdict again, with what the run has measured since
        print(f"diagnose: reusing the probe of {files.diagnosis_json}", file=sys.stderr, flush=True)
    else:
        model = load_causal_lm(cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation).eval()
        rows = diagnose(model, tokenizer, prompts, pairs, cfg)
    write(rows, choose(rows), cfg, files, key)


def cli() -> None:
    """The console script ``neurorit-diagnose``."""
    main()


if __name__ == "__main__":
    cli()
