"""The reader numbers of a config's model on the dev split: does it read, does it know, is it misled?

    .venv/bin/python scripts/check_reader.py --config configs/smollm2.yaml --json outputs/smollm2/reader.json
    .venv/bin/python scripts/check_reader.py --config configs/embedded.yaml --json outputs/demo/reader.json

Keys (Match, 0-1, through the evaluation code: ``rag.evaluate.evaluate_model`` with the config's instruction,
prompt style and chat template):

- ``fresh_gold``: fresh facts (only readable from the documents) with the gold passage alone;
- ``fresh_top5``: fresh facts with the natural top-5 (gold + hard distractors);
- ``known_closed_book``: facts the model knows, no documents;
- ``known_noise_only``: the same facts with five passages none of which holds the answer;
- ``counterfactual_follow``: with the gold passage and a counterfactual passage (same entity and relation,
  another value), how often the answer is the counterfactual passage's value (all questions that have one).

"Known" = ``meta.kind`` ``known`` (English benchmark: the closed-book probe of the base model says known) or
``world`` (embedded benchmark: the world facts the embedded model memorised); "fresh" = ``meta.kind`` ``fresh``.
The same numbers per label (known / unknown / fresh / world) are under ``per_label``. An English benchmark built
with ``--no-probe`` has only ``real`` facts: they stand in for "known", and the JSON says so.
The counterfactual value is ``meta.counterfactual_answer`` when the record has it, else the words of the
counterfactual passage that the question does not contain (the embedded ``E R V .`` passages).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from neurorit import metrics  # noqa: E402
from neurorit.config import parse_args  # noqa: E402
from neurorit.errors import UserError, main_guard  # noqa: E402
from neurorit.files import atomic_write_text  # noqa: E402
from neurorit.records import Record, load_records  # noqa: E402

KNOWN_KINDS = ("known", "world")


def counterfactual_answer(record: Record) -> str:
    value = record.meta.get("counterfactual_answer")
    if value:
        return str(value)
    if not record.counterfactual_ctxs:
        return ""
    question = set(metrics.normalize(record.question).split())
    words = [w for w in metrics.normalize(record.counterfactual_ctxs[0].text).split() if w not in question]
    return " ".join(words)


def _groups(records: list[Record]) -> tuple[list[Record], list[Record], str]:
    kinds = {str(r.meta.get("kind", "")) for r in records}
    fresh = [r for r in records if r.meta.get("kind") == "fresh"]
    known_kind = next((k for k in KNOWN_KINDS if k in kinds), "real" if "real" in kinds else "")
    known = [r for r in records if r.meta.get("kind") == known_kind] if known_kind else []
    if not fresh or not known:
        raise UserError(f"the records need meta.kind 'fresh' and 'known' / 'world' questions (found: "
                        f"{', '.join(sorted(k or '(none)' for k in kinds))}); build them with "
                        f"benchmarks.english.benchmark or benchmarks.embedded.benchmark")
    return fresh, known, known_kind


def _mean(rows: list[dict], key: str = "match") -> float:
    return metrics.mean([r[key] for r in rows])


def reader_numbers(model, tokenizer, records: list[Record], cfg, show_progress: bool = True) -> dict:
    """The five numbers plus the per-label table; generation through ``rag.evaluate.evaluate_model``."""
    from rag.evaluate import evaluate_model

    fresh, known, known_kind = _groups(records)
    real = [r for r in records if r.meta.get("kind") != "fresh"]  # known + unknown (or world / real)
    with_cf = [r for r in records if r.counterfactual_ctxs]
    by_id = {r.id: r for r in records}
    predictions: list[dict] = []
    for subset, settings in ((fresh, ["gold", "top5"]), (real, ["closed_book", "noise_only"]),
                             (with_cf, ["counterfactual"])):
        if not subset:
            continue
        cfg.eval.settings = settings
        _, preds = evaluate_model(model, tokenizer, subset, cfg, show_progress=show_progress)
        predictions += preds
    for p in predictions:
        if p["setting"] == "counterfactual":
            p["follow"] = metrics.match(p["answer"], [counterfactual_answer(by_id[p["id"]])])

    def sel(setting: str, kind=None) -> list[dict]:
        return [p for p in predictions if p["setting"] == setting and (kind is None or p["kind"] == kind)]

    cf = sel("counterfactual")
    out = {
        "fresh_gold": _mean(sel("gold", "fresh")),
        "fresh_top5": _mean(sel("top5", "fresh")),
        "known_closed_book": _mean(sel("closed_book", known_kind)),
        "known_noise_only": _mean(sel("noise_only", known_kind)),
        "counterfactual_follow": _mean(cf, "follow") if cf else 0.0,
        "counterfactual_gold": _mean(cf) if cf else 0.0,
        "known_label": known_kind if known_kind != "real" else "real (benchmark built without the probe: all "
                                                                 "real facts stand in for known)",
        "n": {"fresh": len(fresh), "known": len(known), "real": len(real), "counterfactual": len(cf)},
    }
    per_label: dict[str, dict] = {}
    for kind in sorted({p["kind"] for p in predictions}):
        row = {}
        for setting in ("gold", "top5", "closed_book", "noise_only", "counterfactual"):
            rows = sel(setting, kind)
            if rows:
                row[setting] = _mean(rows)
                if setting == "counterfactual":
                    row["counterfactual_follow"] = _mean(rows, "follow")
        row["n"] = sum(1 for r in records if r.meta.get("kind") == kind)
        per_label[kind] = row
    out["per_label"] = per_label
    return out, predictions


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, help="where to write the numbers (JSON)")
    parser.add_argument("--model", default="", help="checkpoint folder (default: model.path)")
    parser.add_argument("--split", default="dev", choices=["dev", "test", "train"],
                        help="records to read (data.<split>_file; default dev)")
    parser.add_argument("--predictions", default="", help="also write every prediction here (JSONL)")
    parser.add_argument("--no-progress", action="store_true")


@main_guard
def main(argv=None) -> dict:

    from model_patches import load_tokenizer
    from neurorit import parallel, runtime
    from rag.evaluate import load_model

    args, cfg = parse_args(__doc__.split("\n\n")[0], argv, _extra)
    path = {"dev": cfg.data.dev_file, "test": cfg.data.test_file, "train": cfg.data.train_file}[args.split]
    model_path = args.model or cfg.model.path
    if not os.path.isdir(model_path):
        hint = "run `make real-model`" if "smollm2" in model_path else "check model.path"
        raise UserError(f"model folder not found: {model_path}; {hint}")
    if not os.path.isfile(path):
        raise UserError(f"records file not found: {path}; build the benchmark first (python -m "
                        f"benchmarks.english.benchmark --config ... or benchmarks.embedded.benchmark)")
    runtime.start(cfg.runtime, getattr(args, "local_rank", None))
    records = load_records(path, cfg.eval.num_examples, cfg.data.columns)
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, cfg)
    start = time.time()
    numbers, predictions = reader_numbers(model, tokenizer, records, cfg, show_progress=not args.no_progress)
    numbers = {**numbers, "model": model_path, "records": path, "instruction": cfg.eval.instruction,
               "prompt_style": cfg.data.prompt_style, "chat_template": cfg.data.chat_template,
               "seconds": round(time.time() - start, 1)}
    if parallel.is_main():
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_text(args.json, json.dumps(numbers, indent=2) + "\n")
        if args.predictions:
            atomic_write_text(args.predictions, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
        for key in ("fresh_gold", "fresh_top5", "known_closed_book", "known_noise_only", "counterfactual_follow"):
            print(f"{key:>22}: {numbers[key]:.3f}")
        for kind, row in numbers["per_label"].items():
            print(f"{kind:>10} (n={row['n']}): " + "  ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "n"))
        print(f"wrote {args.json}")
    return numbers


if __name__ == "__main__":
    main()
