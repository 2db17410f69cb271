"""Why a run's numbers are what they are: measurements over the files a finished run left on disk.

    python scripts/analyze_run.py --run outputs/smollm2 [--config configs/smollm2.yaml] [--eval-dir DIR ...]
        [--compare-map MAP]
    (the same as python -m rag.analysis ...)

Reads the run's neuron map (``<run>/mining``) and its evaluations (``<run>/eval/<method>.predictions.jsonl``, or
the committed ``.predictions.jsonl.gz``) and writes ``analysis.json`` and ``analysis.md`` (to ``--out``, default the
run folder):

- **primary comparisons** (``primary`` in analysis.json, first in analysis.md): the family the config's
  ``analysis.primary`` x ``analysis.primary_cells`` fixed before any test number, each with n, the paired
  difference, its interval, an exact sign-flip p-value and the Holm-adjusted p-value and verdict at
  ``analysis.alpha`` (``rag/primary.py``); everything below is **exploratory** (analysis.json lists those keys
  under ``exploratory``), not corrected for the many comparisons it makes;
- **where the neurons sit**: per group, how many neurons each layer holds, and the target layers;
- **paired differences**: ``--method`` (default ``neurorit``) minus each other method, per setting, on the same
  questions, with a paired bootstrap 95% interval; an interval that excludes 0 is a difference beyond noise
  (the per-cell intervals of results.md overlap more often than a paired test does);
- **what the answers look like**: per method and setting, the match, the share of empty answers (stage 1 teaches
  EOS on noise, so an empty answer is an abstention) and the share of answers that differ from ``base``'s;
- **identical answers**: per pair of methods (``--method`` against each other one, and each primary pair) and
  setting, the share of the questions both answered where the two answer strings are equal;
- **what training did**: per trained stage (``<run>/<method>/<stage>`` and ``<run>/variants/...``) its trainable
  parameters and its training loss at the first and last step (TensorBoard's ``train/loss``), and where those
  parameters sit: per mined group, whole-FFN layers and anything else, and per layer (``rag/trainable_breakdown.py``);
- with ``--compare-map``: how far another map (e.g. mined with ``mining.target answer_logprob``) agrees with the
  run's, per group (shared neurons, Jaccard) and in its target layers.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
from collections import defaultdict

from neurorit.config import load_config
from neurorit.errors import UserError, main_guard
from neurorit.files import atomic_write_text
from neurorit.metrics import bootstrap_ci, mean
from neurorit.run_layout import (COMMITTED_PREDICTIONS_SUFFIX, PREDICTIONS_SUFFIX, RunLayout, analysis_files,
                                 stage_folders)
from neurorit.neuron_map import GROUPS, NeuronMap
from neurorit.settings import names as setting_names
from rag.primary import paired_diffs, primary_family
from rag.report import ordered
from rag.trainable_breakdown import UNMAPPED, stage_breakdown


def _method_of(fname: str) -> str:
    """The method whose predictions ``fname`` holds (``<method>.predictions.jsonl`` or its committed ``.gz``), or
    "" for another file."""
    for suffix in (PREDICTIONS_SUFFIX, COMMITTED_PREDICTIONS_SUFFIX):
        if fname.endswith(suffix):
            return fname[: -len(suffix)]
    return ""


def load_predictions(eval_dirs: list[str]) -> dict[str, dict[tuple[str, str], dict]]:
    """``{method: {(setting, question id): prediction row}}`` from every ``*.predictions.jsonl`` (or committed
    ``*.predictions.jsonl.gz``) in ``eval_dirs`` (a method name may appear once only)."""
    out: dict[str, dict] = {}
    for eval_dir in eval_dirs:
        if not os.path.isdir(eval_dir):
            raise UserError(f"evaluation folder not found: {eval_dir}")
        for fname in sorted(os.listdir(eval_dir)):
            name = _method_of(fname)
            if name:
                if name in out:
                    raise UserError(f"method {name!r} has predictions more than once in {', '.join(eval_dirs)}")
                path = os.path.join(eval_dir, fname)
                with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as fh:
                    rows = [json.loads(line) for line in fh if line.strip()]
                out[name] = {(r["setting"], r["id"]): r for r in rows}
    if not out:
        raise UserError(f"no *{PREDICTIONS_SUFFIX} files in {', '.join(eval_dirs)} (run rag/evaluate.py first)")
    return out


def in_setting_order(names) -> list[str]:
    """``names`` in the order of the settings registry (``neurorit/settings.py``, the order of results.md), unknown ones last."""
    names = set(names)
    known = setting_names()
    return [s for s in known if s in names] + sorted(names - set(known))


def settings_of(preds: dict[tuple[str, str], dict]) -> list[str]:
    return in_setting_order(s for s, _ in preds)


def paired_difference(a: dict, b: dict, setting: str, kind: str = "", n_resamples: int = 1000) -> dict:
    """Mean of ``match_a - match_b`` over the questions both answered in ``setting`` (of ``meta.kind`` ``kind``
    when given), with its bootstrap interval."""
    diffs = paired_diffs(a, b, setting, kind)
    lo, hi = bootstrap_ci(diffs, n_resamples)
    verdict = "above" if lo > 0 else "below" if hi < 0 else "inside"
    return {"diff": mean(diffs), "ci95": [lo, hi], "n": len(diffs), "verdict": verdict}


def kinds_of(rows: dict) -> list[str]:
    """The question kinds (``meta.kind``) of one method's predictions, in file order."""
    return list(dict.fromkeys(r["kind"] for r in rows.values() if r.get("kind")))


def paired_table(preds: dict, method: str, kind: str = "") -> dict[str, dict[str, dict]]:
    """``{other method: {setting: paired_difference}}`` of ``method`` against every other one."""
    return {other: {s: paired_difference(preds[method], preds[other], s, kind) for s in settings_of(preds[method])}
            for other in ordered(preds) if other != method}


def answer_shapes(preds: dict[str, dict], reference: str = "base") -> dict[str, dict[str, dict]]:
    """Per method and setting: the share of empty answers and the share that differ from ``reference``'s."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    ref = preds.get(reference, {})
    for name, rows in preds.items():
        for setting in settings_of(rows):
            keys = [k for k in rows if k[0] == setting]
            empty = [float(not rows[k]["answer"].strip()) for k in keys]
            shape = {"match": mean([rows[k]["match"] for k in keys]), "empty": mean(empty), "n": len(keys)}
            shared = [k for k in keys if k in ref]
            if ref and name != reference and shared:
                shape["differs_from_" + reference] = mean([float(rows[k]["answer"] != ref[k]["answer"])
                                                           for k in shared])
            out[name][setting] = shape
    return dict(out)


def map_overlap(a: NeuronMap, b: NeuronMap) -> dict:
    """Per group: sizes, neurons in both, Jaccard; and the two maps' target layers."""
    groups = {}
    for g in GROUPS:
        sa = {tuple(r[:2]) for r in a.groups[g].tolist()}
        sb = {tuple(r[:2]) for r in b.groups[g].tolist()}
        union = sa | sb
        groups[g] = {"size_a": len(sa), "size_b": len(sb), "both": len(sa & sb),
                     "jaccard": len(sa & sb) / len(union) if union else 1.0}
    return {"groups": groups, "target_layers_a": a.target_layers, "target_layers_b": b.target_layers,
            "mining_b": {k: v for k, v in b.provenance.get("mining", {}).items()
                           if k in ("target", "num_examples", "steps")}}


def training_losses(run: str) -> dict[str, dict]:
    """``{"<method>/<stage>": {"trainable_params", "first_loss", "last_loss", "steps"}}`` of every finished stage."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for name, files in stage_folders(run).items():
        with open(files.summary, encoding="utf-8") as fh:
            info = json.load(fh)
        losses = []
        if os.path.isdir(files.tensorboard):  # a stage that trains nothing only exports
            acc = EventAccumulator(files.tensorboard)
            acc.Reload()
            losses = [e.value for e in acc.Scalars("train/loss")] if "train/loss" in acc.Tags()["scalars"] else []
        out[name] = {"trainable_params": info["trainable_params"], "steps": len(losses),
                     "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
    return out


def identical_answers(preds: dict, pairs: list[str]) -> dict[str, dict[str, dict]]:
    """``{"A:B": {setting: {"share", "n"}}}``: per pair of evaluated methods and setting, the share of the
    questions both answered where A's answer string equals B's."""
    out = {}
    for pair in pairs:
        a, b = (preds.get(name) for name in pair.split(":"))
        if a is None or b is None:
            continue
        per = {}
        for setting in settings_of(a):
            keys = [k for k in a if k[0] == setting and k in b]
            if keys:
                per[setting] = {"share": mean([float(a[k]["answer"] == b[k]["answer"]) for k in keys]), "n": len(keys)}
        out[pair] = per
    return out


def analyze(run: str, eval_dirs: tuple[str, ...] = (), method: str = "neurorit", compare_map: str = "",
            config: str = "") -> dict:
    """Every measurement of the module docstring; the primary family from the ``analysis`` section of ``config``
    (an experiment YAML; empty = the defaults)."""
    plan = load_config(config or None).analysis
    layout = RunLayout(run)
    nmap = NeuronMap.load(layout.mining.root)
    preds = load_predictions(list(eval_dirs) or [layout.evaluation()])
    if method not in preds:
        raise UserError(f"no predictions of method {method!r} in the evaluation folder (have: {', '.join(preds)})")
    pairs = list(dict.fromkeys([f"{method}:{other}" for other in ordered(preds) if other != method] + plan.primary))
    result = {
        "primary": {**primary_family(preds, plan.primary, plan.primary_cells, plan.alpha),
                    "fixed_in": config or "the defaults of neurorit/config.py"},
        "neurons": {"sizes": {g: len(nmap.groups[g]) for g in GROUPS}, "per_layer": nmap.layer_counts(),
                    "target_layers": nmap.target_layers, "provenance": nmap.provenance},
        "method": method,
        "paired": paired_table(preds, method),
        "paired_by_kind": {k: paired_table(preds, method, k) for k in kinds_of(preds[method])},
        "answers": answer_shapes(preds),
        "identical_answers": identical_answers(preds, pairs),
        "training": training_losses(run),
        "parameters": {name: stage_breakdown(files, nmap) for name, files in stage_folders(run).items()},
    }
    if compare_map:
        result["map_overlap"] = map_overlap(nmap, NeuronMap.load(compare_map))
    result["exploratory"] = [k for k in result if k not in ("primary", "method")]
    return result


def render_markdown(res: dict) -> str:
    n = res["neurons"]
    lines = ["# Analysis", ""] + _primary_lines(res["primary"]) + [
             "", "# Exploratory: everything below (not corrected for the many comparisons it makes)", "",
             "## Where the mined neurons sit", "",
             f"Sizes: {n['sizes']}; target layers: {n['target_layers']}.", "",
             "| group | " + " | ".join(f"L{i}" for i in range(len(n["per_layer"][GROUPS[0]]))) + " |",
             "|---|" + "---|" * len(n["per_layer"][GROUPS[0]])]
    lines += [f"| {g} | " + " | ".join(str(c) for c in n["per_layer"][g]) + " |" for g in GROUPS]
    m = res["method"]
    settings = in_setting_order(s for d in res["paired"].values() for s in d)
    lines += ["", f"## {m} minus each method, paired over the same questions (match, points, 95% interval)", ""]
    lines += _paired_lines(res["paired"], settings)
    for kind, table in res.get("paired_by_kind", {}).items():
        lines += ["", f"### {kind}-fact questions", ""] + _paired_lines(table, settings)
    lines += ["", "## Answers: match / share empty / share different from base (%)", "",
              "| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for name in ordered(res["answers"]):
        per = res["answers"][name]
        cells = []
        for s in settings:
            a = per.get(s)
            cells.append("-" if a is None else f"{100 * a['match']:.1f} / {100 * a['empty']:.0f} / " +
                         (f"{100 * a['differs_from_base']:.0f}" if "differs_from_base" in a else "-"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if res["training"]:
        lines += ["", "## Training: trainable parameters and loss at the first / last step", "",
                  "| stage | trainable | first loss | last loss |", "|---|---:|---:|---:|"]
        for name, t in res["training"].items():
            first, last = (f"{t[k]:.3f}" if t[k] is not None else "-" for k in ("first_loss", "last_loss"))
            lines.append(f"| {name} | {t['trainable_params']:,} | {first} | {last} |")
    lines += _identical_lines(res["identical_answers"], settings) + _parameter_lines(res["parameters"])
    if "map_overlap" in res:
        o = res["map_overlap"]
        lines += ["", f"## Overlap with another map ({o['mining_b']})", "",
                  f"Target layers: {o['target_layers_a']} vs {o['target_layers_b']}.", "",
                  "| group | this map | other map | in both | Jaccard |", "|---|---|---|---|---|"]
        lines += [f"| {g} | {v['size_a']} | {v['size_b']} | {v['both']} | {v['jaccard']:.2f} |"
                  for g, v in o["groups"].items()]
    return "\n".join(lines) + "\n"


def _primary_lines(family: dict) -> list[str]:
    """The primary family's section of analysis.md."""
    lines = [f"## Primary comparisons (fixed in {family['fixed_in']} before any test number; Holm-adjusted over "
             f"{family['size']}, alpha {family['alpha']})", "",
             f"A minus B, match in points, paired over the same questions; p: {family['test']}.", "",
             "| A vs B | cell | n | A - B [95% interval] | p | p (Holm) | verdict |",
             "|---|---|---:|---|---:|---:|---|"]
    for c in family["comparisons"]:
        head = f"| {c['a']} vs {c['b']} | {c['kind']}/{c['setting']} | {c['n']} | "
        if c["p"] is None:
            lines.append(head + f"- | - | - | missing: {c['missing']} |")
            continue
        lo, hi = (100 * x for x in c["ci95"])
        better = {"A better": f"{c['a']} better", "B better": f"{c['b']} better"}.get(c["verdict"], c["verdict"])
        lines.append(head + f"{100 * c['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}] | {c['p']:.3g} | {c['p_holm']:.3g} | "
                     f"{better} |")
    return lines


def _identical_lines(shares: dict, settings: list[str]) -> list[str]:
    """The identical-answer section of analysis.md."""
    if not shares:
        return []
    lines = ["", "## Identical answers: share of the questions where A's answer string equals B's (%)", "",
             "| A vs B | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for pair, per in shares.items():
        cells = [f"{100 * per[s]['share']:.1f} (n={per[s]['n']})" if s in per else "-" for s in settings]
        lines.append(f"| {pair.replace(':', ' vs ')} | " + " | ".join(cells) + " |")
    return lines


def _parameter_lines(parameters: dict) -> list[str]:
    """The trainable-parameter breakdown section of analysis.md."""
    if not parameters:
        return []
    seen = {g for p in parameters.values() for g in p["groups"]}
    groups = [g for g in (*GROUPS, UNMAPPED, "ffn_layers", "other") if g in seen]
    lines = ["", "## Where the trainable parameters sit (each stage's train_summary.json, its neurons by the map's "
             "groups)", "",
             "| stage | recorded | " + " | ".join(groups) + " | per layer: neurons with deltas / whole FFN |",
             "|---|---:|" + "---:|" * len(groups) + "---|"]
    for name, p in parameters.items():
        layers = ", ".join(f"L{layer} " + (f"{v['neurons']}n" if v["neurons"] else "FFN")
                           for layer, v in p["per_layer"].items()) or ("-" if p["recorded_split"] else
                                                                       "(its summary records the total only)")
        cells = [f"{p['groups'][g]:,}" if g in p["groups"] else "-" for g in groups]
        lines.append(f"| {name} | {p['recorded']:,} | " + " | ".join(cells) + f" | {layers} |")
    return lines


def _paired_lines(table: dict, settings: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for other, per in table.items():
        cells = []
        for s in settings:
            d = per.get(s)
            if d is None or not d["n"]:
                cells.append("-")
                continue
            lo, hi = (100 * x for x in d["ci95"])
            cells.append(f"{100 * d['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}] {d['verdict']} (n={d['n']})")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return lines


@main_guard
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run's output_dir (holds mining/ and eval/)")
    p.add_argument("--config", default="", help="the experiment YAML whose analysis section names the primary "
                                                "comparisons (default: the config defaults)")
    p.add_argument("--eval-dir", action="append", default=[],
                   help="a folder of evaluations to read; repeat for several (default: <run>/eval)")
    p.add_argument("--method", default="neurorit", help="the method compared with every other (default: neurorit)")
    p.add_argument("--compare-map", default="", help="another neuron map (folder or file) to compare with the run's")
    p.add_argument("--out", default="", help="folder for analysis.json / analysis.md (default: --run)")
    args = p.parse_args(argv)
    res = analyze(args.run, args.eval_dir, args.method, args.compare_map, args.config)
    out = args.out or args.run
    os.makedirs(out, exist_ok=True)
    files = analysis_files(out)
    atomic_write_text(files["json"], json.dumps(res, indent=1))
    md = render_markdown(res)
    atomic_write_text(files["md"], md)
    print(md)
    return res


if __name__ == "__main__":
    main()
