"""Combine the per-method evaluations (``<name>.eval.json`` from ``rag/evaluate.py``) into the experiment report.

Writes three files to the output folder (default ``runtime.output_dir``):

- ``results.json``: ``{"methods": {name: {"trainable_params": int, "settings": {setting: {"match", "em", "f1",
  "match_ci95": [lo, hi]}}, "by_kind": {"world": {setting: {...}}, "fresh": {...}}}}}``, plus ``"selection"`` (the
  dev selection's ``selection.json``, ``rag/selection.py``) when ``--selection`` names one — nothing else, so
  scripts can rely on the shape; methods in the canonical order (base, baselines, Neuro-RIT variants, others).
- ``results.md``: readable tables — Match with its 95% interval per method x setting (plus trainable
  parameters), EM / F1, and the same Match table for world-fact and fresh-fact questions.
- ``results.png``: grouped bars of Match per setting per method with the interval as error bars; one
  panel for all questions and one per question kind; a cell not evaluated is marked "n/a", never a 0% bar.

    python -m rag.report --config configs/embedded.yaml                # reads <runtime.output_dir>/eval
    python -m rag.report --eval-dir outputs/demo/eval --out outputs/demo --methods base,neurorit
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional

from neurorit.config import parse_args
from neurorit.errors import UserError, main_guard
from neurorit.files import atomic_save_figure, atomic_write_text
from neurorit.methods import REPORT_ORDER
from neurorit.run_layout import EVAL_SUFFIX, RunLayout, eval_files, evaluated_names, results_files
from neurorit import settings as setting_registry



# ------------------------------------------------------------------------------------------------ loading
def load_evaluations(eval_dir: str, methods: Optional[list[str]] = None) -> dict[str, dict]:
    """``{name: eval dict}`` from ``<eval_dir>/<name>.eval.json`` (all of them, or exactly ``methods``)."""
    if not os.path.isdir(eval_dir):
        raise UserError(f"evaluation folder not found: {eval_dir} (run python -m rag.evaluate first)")
    if methods:
        paths = {m: eval_files(eval_dir, m).result for m in methods}
        missing = [p for p in paths.values() if not os.path.isfile(p)]
        if missing:
            raise UserError(f"no evaluation for: {', '.join(missing)}")
    else:
        paths = evaluated_names(eval_dir)
        if not paths:
            raise UserError(f"no *{EVAL_SUFFIX} files in {eval_dir} (run python -m rag.evaluate first)")
    out = {}
    for name, path in paths.items():
        with open(path, encoding="utf-8") as fh:
            try:
                out[name] = json.load(fh)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: not valid JSON ({err.msg})") from None
    return out


def ordered(names) -> list[str]:
    """The registry's methods first (``neurorit.methods.REPORT_ORDER``), then any others alphabetically."""
    names = list(names)
    return [m for m in REPORT_ORDER if m in names] + sorted(n for n in names if n not in REPORT_ORDER)


def _stats(block: dict) -> dict:
    """Keep the known settings, in canonical order, with exactly the four reported numbers."""
    out = {}
    known = setting_registry.names()
    for setting in [s for s in known if s in block] + sorted(s for s in block if s not in known):
        st = block[setting]
        out[setting] = {"match": float(st["match"]), "em": float(st["em"]), "f1": float(st["f1"]),
                        "match_ci95": [float(st["match_ci95"][0]), float(st["match_ci95"][1])]}
    return out


def combine(evaluations: dict[str, dict], trainable_params: Optional[dict[str, int]] = None) -> dict:
    """The results.json object (see module docstring); ``trainable_params`` overrides the recorded counts."""
    overrides = trainable_params or {}
    methods = {}
    for name in ordered(evaluations):
        ev = evaluations[name]
        by_kind = ev.get("by_kind", {})
        kinds = list(by_kind)  # the question kinds of the records, in the order evaluation found them
        methods[name] = {"trainable_params": int(overrides.get(name, ev.get("trainable_params", 0))),
                         "settings": _stats(ev.get("settings", {})),
                         "by_kind": {k: _stats(by_kind[k]) for k in kinds}}
    return {"methods": methods}


# ---------------------------------------------------------------------------------------------- rendering
def _settings_of(results: dict, kind: Optional[str] = None) -> list[str]:
    seen: list[str] = []
    for m in results["methods"].values():
        block = m["settings"] if kind is None else m["by_kind"].get(kind, {})
        seen += [s for s in block if s not in seen]
    known = setting_registry.names()
    return [s for s in known if s in seen] + [s for s in seen if s not in known]


def _kinds_of(results: dict) -> list[str]:
    seen: list[str] = []
    for m in results["methods"].values():
        seen += [k for k in m["by_kind"] if k not in seen]
    return seen


def _cell(st: Optional[dict], metric: str = "match") -> str:
    if st is None:
        return "–"
    if metric == "match":
        lo, hi = st["match_ci95"]
        return f"{100 * st['match']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{100 * st[metric]:.1f}"


def _table(results: dict, kind: Optional[str], metric: str = "match", params: bool = False) -> list[str]:
    settings = _settings_of(results, kind)
    head = ["method"] + (["trainable params"] if params else []) + settings
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in results["methods"].items():
        block = m["settings"] if kind is None else m["by_kind"].get(kind, {})
        row = [f"`{name}`"] + ([f"{m['trainable_params']:,}"] if params else [])
        lines.append("| " + " | ".join(row + [_cell(block.get(s), metric) for s in settings]) + " |")
    return lines


def render_markdown(results: dict, counts: Optional[dict[str, dict]] = None) -> str:
    """results.md text. ``counts``: optional ``{setting: questions}`` shown under the first table."""
    out = ["# Results", "",
           "Match (%, normalized gold answer contained in the extracted answer) with its 95% bootstrap interval; "
           + setting_registry.legend(), "", "## All questions", ""]
    out += _table(results, None, "match", params=True)
    if counts:
        out += ["", "Questions per setting: " + ", ".join(f"{s} {n}" for s, n in counts.items()) + "."]
    for metric, title in (("em", "Exact match (%)"), ("f1", "Token F1 (%)")):
        out += ["", f"## {title}", ""] + _table(results, None, metric)
    for kind in _kinds_of(results):
        out += ["", f"## {kind.capitalize()}-fact questions (Match %)", ""] + _table(results, kind, "match")
    if "selection" in results:
        out += ["", "## Chosen on dev (rag/selection.py)", ""] + _selection_lines(results["selection"])
    return "\n".join(out) + "\n"


def _selection_lines(sel: dict) -> list[str]:
    """The dev selection's trials and choices, as results.md lists them."""
    rules, out = sel["rules"], []
    s1 = sel.get("stage1") or {}
    if s1:
        out.append(f"Stage 1 (rule: dev noise-only end-token share >= {rules['stage1_noise_end']:.0%} and gold-only "
                   f"Match at most {rules['stage1_gold_drop'] * 100:g} points below base; "
                   f"{'reached' if s1['reached'] else 'NOT reached'}):")
        out += ["", "| steps | lr | noise-only end share | gold end share | gold Match (base) | passes |",
                "|---|---|---|---|---|---|"]
        out += [f"| {t['max_steps']} | {t['lr']:g} | {t['noise_end_share']:.1%} | {t['gold_end_share']:.1%} | "
                f"{t['gold_match'] * 100:.1f} ({t['base_gold_match'] * 100:.1f}) | {'yes' if t['passes'] else 'no'} |"
                for t in s1["trials"]]
        out += ["", f"Chosen: {s1['chosen']['max_steps']} steps at lr {s1['chosen']['lr']:g}."]
        if "best_gap" in s1:
            best = s1["trials"][s1["best_gap"]]
            out.append(f"Best gap (noise-only minus gold end share): {best['gap']:.1%} at {best['max_steps']} steps, "
                       f"lr {best['lr']:g}; points after the grid, by bisection: "
                       f"{sum(t.get('bisected', False) for t in s1['trials'])}.")
        if "mined_vs_random" in s1:
            c = s1["mined_vs_random"]
            out.append(f"Mined vs random stage-1 neurons at the chosen point ({c['n']} dev questions): gap "
                       f"{c['mined_gap']:.1%} vs {c['random_gap']:.1%}, difference {c['difference']:+.1%} "
                       f"[{c['ci95'][0]:+.1%}, {c['ci95'][1]:+.1%}].")
        out.append("")
    if sel.get("stage2"):
        dev = (f"at most {rules['dev_per_kind']} dev questions of each kind" if rules.get("dev_per_kind")
               else f"{rules['dev_examples']} dev questions")
        out.append(f"Stage-2 learning rate: grid {', '.join(f'{v:g}' for v in rules['lrs'])}; criterion: mean dev "
                   f"Match over {', '.join(rules['settings'])} ({dev}).")
        out += ["", "| method | key | dev score per lr (tried in this order) | chosen | interior | shared with |",
                "|---|---|---|---|---|---|"]
        out += [f"| {name} | {m['key']} | " + ", ".join(f"{lr:g}: {v * 100:.1f}" for lr, v in m["scores"]) +
                f" | {m['chosen']:g} | {_yes_no(m.get('interior'))} | {m.get('shared_with', '')} |"
                for name, m in sel["stage2"].items()]
    return out


def _yes_no(flag: Optional[bool]) -> str:
    return "" if flag is None else ("yes" if flag else "no")


MISSING = "not evaluated"  # what results.png writes where a method was not evaluated under a setting
ZERO = "0%"  # what it writes on a true 0 (a bar of no height), so the two never look alike


def _panel(results: dict, kind: Optional[str]) -> tuple[list[str], dict[str, list[tuple[float, Optional[dict]]]]]:
    """(settings, {method: [(bar x, the cell's stats or None when missing)]}) of one panel of results.png."""
    settings = _settings_of(results, kind)
    names = list(results["methods"])
    width = 0.8 / max(1, len(names))
    cells = {}
    for j, name in enumerate(names):
        m = results["methods"][name]
        block = m["settings"] if kind is None else m["by_kind"].get(kind, {})
        cells[name] = [(i + (j - (len(names) - 1) / 2) * width, block.get(s)) for i, s in enumerate(settings)]
    return settings, cells


def panel_sizes(evaluations: dict[str, dict]) -> dict[Optional[str], int]:
    """``{None: questions of the whole evaluation, kind: questions of that kind}``: the most any method's setting
    counted (each setting of an evaluation reads every question), for the panels' ``n``."""
    sizes: dict[Optional[str], int] = {}
    for ev in evaluations.values():
        blocks = [(None, ev.get("settings", {}))] + list(ev.get("by_kind", {}).items())
        for kind, block in blocks:
            for st in block.values():
                if isinstance(st, dict) and st.get("n") is not None:
                    sizes[kind] = max(sizes.get(kind, 0), int(st["n"]))
    return sizes


def figure(results: dict, sizes: Optional[dict] = None):
    """The results.png figure: grouped bars of Match (%) per setting per method (one panel for all questions, one
    per kind, each titled with its ``n`` from ``sizes``), the interval as error bars; a cell that is missing gets
    no bar, only the mark ``MISSING``; a true 0 is marked ``ZERO``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(None, "all questions")] + [(k, f"{k} facts") for k in _kinds_of(results)]
    names = list(results["methods"])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False, sharey=True)
    width = 0.8 / max(1, len(names))
    colors = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for ax, (kind, title) in zip(axes[0], panels):
        settings, cells = _panel(results, kind)
        for j, name in enumerate(names):
            present = [(x, st) for x, st in cells[name] if st is not None]
            vals = [100 * st["match"] for _, st in present]
            err = [[100 * max(0.0, st["match"] - st["match_ci95"][0]) for _, st in present],
                   [100 * max(0.0, st["match_ci95"][1] - st["match"]) for _, st in present]]
            ax.bar([x for x, _ in present], vals, width, yerr=err, capsize=2, label=name, color=colors(j % colors.N))
            for x, st in cells[name]:
                if st is None:
                    ax.text(x, 2, MISSING, ha="center", va="bottom", rotation=90, fontsize=8, color="0.2",
                            style="italic")
                elif st["match"] == 0:
                    ax.text(x, 1, ZERO, ha="center", va="bottom", fontsize=8, color="black", weight="bold")
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels(settings, rotation=20)
        ax.set_ylim(0, 105)
        ax.set_title(title + (f" (n={sizes[kind]})" if sizes and kind in sizes else ""))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Match (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(names), 7), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))  # room for the legend below the panels
    return fig


def plot(results: dict, path: str, sizes: Optional[dict] = None) -> str:
    """Write ``figure(results, sizes)`` to ``path`` (atomically)."""
    return atomic_save_figure(figure(results, sizes), path)


def write_report(results: dict, out_dir: str, counts: Optional[dict[str, int]] = None,
                 sizes: Optional[dict] = None) -> dict[str, str]:
    """Write results.json, results.md and results.png into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = results_files(out_dir)
    atomic_write_text(paths["json"], json.dumps(results, indent=2) + "\n")
    atomic_write_text(paths["md"], render_markdown(results, counts))
    plot(results, paths["png"], sizes)
    return paths


def report(eval_dir: str, out_dir: str, methods: Optional[list[str]] = None,
           trainable_params: Optional[dict[str, int]] = None, selection_file: str = "") -> dict[str, str]:
    """Load, combine and write; the library entry the demo pipeline calls."""
    evaluations = load_evaluations(eval_dir, methods)
    results = combine(evaluations, trainable_params)
    if selection_file:
        if not os.path.isfile(selection_file):
            raise UserError(f"--selection {selection_file}: no such file (the demo writes selection/selection.json)")
        with open(selection_file) as fh:
            results["selection"] = json.load(fh)
    first = evaluations[ordered(evaluations)[0]]
    counts = {s: st.get("n") for s, st in first.get("settings", {}).items() if st.get("n") is not None}
    return write_report(results, out_dir, counts or None, panel_sizes(evaluations))


# --------------------------------------------------------------------------------------------------- entry
def _parse_params(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = int(value)
        except ValueError:
            raise UserError(f"--trainable-params {item!r}: use NAME=COUNT, e.g. neurorit=73728") from None
    return out


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-dir", default="", help="folder of <name>.eval.json files "
                        "(default: eval.output_dir or <runtime.output_dir>/eval)")
    parser.add_argument("--out", default="", help="where results.json/.md/.png go (default: runtime.output_dir)")
    parser.add_argument("--methods", default="", help="comma-separated method names (default: every evaluation)")
    parser.add_argument("--trainable-params", nargs="*", default=[], metavar="NAME=COUNT",
                        help="override the trainable parameter count recorded for a method")
    parser.add_argument("--selection", default="", metavar="FILE",
                        help="the dev selection's selection.json, copied into results.json (scripts/demo.py passes it)")


@main_guard
def main(argv=None) -> dict[str, str]:
    args, cfg = parse_args(__doc__, argv, _extra_args)
    eval_dir = args.eval_dir or RunLayout.of(cfg).evaluation()
    methods = [m for m in args.methods.split(",") if m] or None
    paths = report(eval_dir, args.out or cfg.runtime.output_dir, methods, _parse_params(args.trainable_params),
                   args.selection)
    for what, path in paths.items():
        print(f"{what}: {path}")
    return paths


if __name__ == "__main__":
    main()
