"""Evaluate one model (one method) on the test records under every retrieval setting.

For each test question and each setting (``gold``, ``top5``, ``noise_only``, ``counterfactual``,
``closed_book``; see ``neurorit/settings.py``) the prompt uses the inference instruction (``eval.instruction``:
``two_step`` = write the evidence, then ``answer:``; or ``answer_only``), the model answers greedily, the answer
is extracted, and Match / EM / F1 are computed (``neurorit/metrics.py``). Results are reported for all questions
and per question kind (``meta.kind``: ``world`` / ``fresh`` in the embedded benchmark), each Match with a seeded
95% bootstrap interval. The model is always a plain Hugging Face checkpoint: every method's own rule (hard
deactivation included) is folded into its export by ``train/``, so nothing is patched here.

Distributed: prompts are cut into length-sorted batches that do not depend on the number of ranks; each rank
generates its share of them (``hf``: balanced by estimated cost, ``rag.generate.balanced_shares``; ``zero3``: rank r
takes r, r+W, ...); the outputs are gathered, so every rank holds the same result and it equals a one-rank run
exactly. Rank 0 writes the files, TensorBoard scalars and a progress bar.

    python -m rag.evaluate --config configs/embedded.yaml --model outputs/demo/stage2/export --name neurorit
    deepspeed --num_gpus 2 rag/evaluate.py --config ... --model ... --name base      # same numbers, faster

Writes ``<eval.output_dir>/<name>.eval.json`` (metrics, model, settings, trainable parameters),
``<name>.predictions.jsonl`` (one line per question x setting: prompt length, raw output, extracted answer,
scores) and ``<name>.config.yaml``; TensorBoard scalars go to ``<eval.output_dir>/tensorboard/<name>_<instruction>``
(every path from ``neurorit/run_layout.py``).
``rag/report.py`` combines the ``*.eval.json`` files of all methods into results.json / results.md / a chart.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from typing import Optional

if __name__ == "__main__" and not __package__:  # run as a script (deepspeed rag/evaluate.py): import from the
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # repo root, not from rag/ itself


from model_patches import load_tokenizer
from model_patches.model_card import trainable_params_of
from neurorit import parallel
from neurorit.config import ExperimentConfig, parse_args, save_config
from neurorit.errors import UserError, main_guard
from neurorit.files import atomic_write_text
from neurorit.run_layout import EvalFiles, RunLayout, eval_files, read_summary, trained_params
from neurorit.methods import REPORT_ORDER
from neurorit import metrics
from rag.backends import as_backend, generate_resumably, init_process, load_backend
from rag.generate import Decoding, eos_ids_of, length_batches, pad_id_of
from rag.resume import BatchStore, MemoryStore, fingerprint
from neurorit.prompts import PromptBuilder, TruncationCounter, encode, prompt_builder
from neurorit.records import Record, load_records, select_by_kind
from neurorit.settings import docs_for_setting, has_setting, names as setting_names

log = logging.getLogger("rag.evaluate")


# ------------------------------------------------------------------------------------------ answer extraction
def _marker_regex(marker: str) -> re.Pattern:
    """``"answer :"`` / ``"Answer:"`` -> a case-insensitive pattern with flexible spaces around the words."""
    words = [re.escape(w) for w in marker.replace(":", " : ").split()]
    return re.compile(r"\s*".join(words), re.IGNORECASE)


def extract_answer(output: str, instruction: str, answer_marker: str) -> str:
    """The answer inside a model output.

    ``answer_only``: the whole output. ``two_step``: the text after the first answer marker up to the end of
    that line; without a marker, the last non-empty line (the whole text when it is one line).
    """
    text = output.strip()
    if instruction == "answer_only":
        return text
    found = _marker_regex(answer_marker).search(text)
    if found:
        after = text[found.end():].strip()
        return after.splitlines()[0].strip() if after else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------------------- prompts
def build_jobs(records: list[Record], settings: list[str], builder: PromptBuilder, tokenizer, instruction: str,
               num_docs: int, max_length: int) -> tuple[list[dict], list[list[int]], TruncationCounter]:
    """One job per (setting, record) that has the setting: its metadata and its prompt token ids."""
    jobs: list[dict] = []
    prompts: list[list[int]] = []
    trunc = TruncationCounter()
    make = builder.two_step if instruction == "two_step" else builder.answer_only
    for setting in settings:
        for rec in records:
            if not has_setting(rec, setting):
                continue
            parts = make(rec.question, docs_for_setting(rec, setting, num_docs))
            try:
                enc = encode(tokenizer, parts, max_length, with_output=False)
            except ValueError as err:
                raise UserError(f"record {rec.id} ({setting}): {err}; raise data.max_length") from None
            trunc.add(enc, rec.id)
            jobs.append({"id": rec.id, "setting": setting, "kind": str(rec.meta.get("kind", "")),
                         "answers": rec.answers})
            prompts.append(enc.input_ids)
    return jobs, prompts, trunc


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_model(model, tokenizer, records: list[Record], cfg: ExperimentConfig, show_progress: bool = True,
                   store=None, model_path: str = ""):
    """Generate, extract and score; return ``(summary, predictions)``. Collective.

    ``model``: a backend of ``rag/backends.py`` or a bare Hugging Face model (the ``hf`` backend). Batches go to
    the ranks (``hf``: shares balanced by cost; ``zero3``: round-robin) or all to the one process (``vllm``); each finished batch goes to
    ``store`` (``rag.resume.BatchStore``: on disk, resumable; default: in memory). Every rank returns the same
    objects. ``summary`` = ``{"settings": {setting: stats}, "by_kind": {kind: {setting: stats}}}`` with stats
    ``{"match", "em", "f1", "match_ci95", "n"}``; ``predictions`` = one dict per job in a fixed order (settings,
    then records).
    """
    ev = cfg.eval
    backend = as_backend(model)
    settings = [s for s in ev.settings if s in setting_names()]
    builder = prompt_builder(cfg.data, tokenizer)
    jobs, prompts, trunc = build_jobs(records, settings, builder, tokenizer, ev.instruction, cfg.data.num_docs,
                                      cfg.data.max_length)
    if parallel.is_main():
        if trunc.truncated:
            log.warning(trunc.report("evaluation prompts"))
        for s in settings:
            if not any(j["setting"] == s for j in jobs):
                log.warning("setting %s has no questions (no record has the passages it needs); left out", s)
    check_positions(backend, prompts, ev.max_new_tokens)
    eos_ids = eos_ids_of(backend, tokenizer, builder.stop_ids)
    pad_id = pad_id_of(tokenizer, eos_ids)
    batches = length_batches(prompts, ev.batch_size)
    if store is None:
        store = MemoryStore()
    decoding = Decoding(ev.max_new_tokens, tuple(eos_ids), pad_id)
    if isinstance(store, str):
        store = BatchStore(store, fingerprint(prompts, ev.batch_size, decoding, backend.name, model_path))
    tokens = generate_resumably(backend, prompts, batches, decoding, store, ev.resume,
                                ("evaluate", "prompt") if show_progress else None)

    predictions = []
    for i, job in enumerate(jobs):
        output = tokenizer.decode(tokens[i], skip_special_tokens=True)
        answer = extract_answer(output, ev.instruction, builder.answer_marker)
        predictions.append({**job, "prompt_tokens": len(prompts[i]), "output": output, "answer": answer,
                            **metrics.score(answer, job["answers"])})
    return summarize(predictions, settings, ev.bootstrap, cfg.runtime.seed), predictions


def check_positions(model, prompts: list[list[int]], max_new_tokens: int) -> None:
    """UserError when the longest prompt plus ``max_new_tokens`` exceeds the model's position range."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max((len(p) for p in prompts), default=0)
    if limit and longest + max_new_tokens > limit:
        raise UserError(f"the longest evaluation prompt ({longest} tokens) + eval.max_new_tokens ({max_new_tokens})"
                        f" exceeds the model's {limit} positions; lower data.max_length or eval.max_new_tokens")


def summarize(predictions: list[dict], settings: list[str], bootstrap: int, seed: int) -> dict:
    """Per setting and per question kind aggregates of scored predictions (settings with no question left out)."""
    def block(rows: list[dict]) -> dict:
        out = {}
        for s in settings:
            sel = [r for r in rows if r["setting"] == s]
            if sel:
                out[s] = metrics.summarize(sel, bootstrap, seed)
        return out

    kinds = list(dict.fromkeys(r["kind"] for r in predictions if r["kind"]))  # the records' own, in file order
    return {"settings": block(predictions),
            "by_kind": {k: block([r for r in predictions if r["kind"] == k]) for k in kinds}}


# ------------------------------------------------------------------------------------------------- loading
def load_model(path: str, cfg: ExperimentConfig):
    """The model to evaluate, full on this rank (the ``hf`` backend's model)."""
    from model_patches import load_causal_lm

    return load_causal_lm(path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation)


# ---------------------------------------------------------------------------------------------- writing
def write_outputs(files: EvalFiles, result: dict, predictions: list[dict]) -> str:
    """Predictions, then ``<name>.eval.json`` last, each atomically: an eval.json always has its predictions."""
    atomic_write_text(files.predictions, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    atomic_write_text(files.result, json.dumps(result, indent=2) + "\n")
    return files.result


def write_tensorboard(logdir: str, summary: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(logdir)
    try:
        groups = [("eval", summary["settings"])] + [(f"eval_{k}", v) for k, v in summary["by_kind"].items()]
        for group, block in groups:
            for setting, stats in block.items():
                for metric in ("match", "em", "f1"):
                    writer.add_scalar(f"{group}/{setting}/{metric}", stats[metric], 0)
    finally:
        writer.close()


def print_table(name: str, summary: dict) -> None:
    print(f"{name}: " + "  ".join(f"{s} match={v['match']:.3f} [{v['match_ci95'][0]:.3f},{v['match_ci95'][1]:.3f}]"
                                  f" (n={v['n']})" for s, v in summary["settings"].items()))


# --------------------------------------------------------------------------------------------------- entry
def trainable_count(model_path: str) -> int:
    """The trainable parameters behind a checkpoint: the ``train_summary.json`` files of its stages when they are
    beside it, else what its model card records (an export copied elsewhere), else 0 (a base model)."""
    if read_summary(model_path) is not None:
        return trained_params(model_path)
    return trainable_params_of(model_path) or 0 if os.path.isdir(model_path) else 0


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="", help="checkpoint folder to evaluate (default: model.path)")
    parser.add_argument("--name", required=True,
                        help="method name for the outputs (the report orders the names of neurorit/methods.py: "
                             + ", ".join(REPORT_ORDER) + "; any other name is reported after them)")
    parser.add_argument("--trainable-params", type=int, default=None,
                        help="trainable parameter count of the method, recorded for the report (default: read from "
                             "the train_summary.json files of the stages behind --model; 0 for a base model)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args, cfg: ExperimentConfig) -> Optional[dict]:
    """Evaluate per ``args`` / ``cfg``; returns the result dict (on every rank) after rank 0 wrote it.

    Resumable: finished batches are kept in ``<name>.partial/`` until the end; a re-run of the same command
    continues from them (``eval.resume``). ``<name>.eval.json`` of an earlier run is removed first, so that it
    exists only when this run has finished."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", args.name):
        raise UserError(f"--name {args.name!r}: use letters, digits, '_', '-' or '.' only")
    init_process(cfg.eval.backend, cfg.runtime, args.local_rank)
    model_path = args.model or cfg.model.path
    ev = cfg.eval
    records = load_records(cfg.data.test_file, -1 if ev.kinds or ev.max_per_kind >= 0 else ev.num_examples,
                           cfg.data.columns)
    records = select_by_kind(records, ev.kinds, ev.max_per_kind)
    if not records:
        raise UserError(f"{cfg.data.test_file}: no question of eval.kinds {ev.kinds}")
    records = records[:ev.num_examples] if ev.num_examples > 0 else records
    tokenizer = load_tokenizer(model_path)
    out = RunLayout.of(cfg).evaluation()
    files = eval_files(out, args.name)
    if parallel.is_main() and os.path.exists(files.result):
        os.remove(files.result)  # a stale done marker would outlive a run killed from here on
    started = time.perf_counter()
    backend = load_backend(cfg.eval.backend, model_path, cfg,
                           max_model_len=cfg.data.max_length + cfg.eval.max_new_tokens)
    if parallel.is_main():
        log.info("%s backend ready in %.2f s", backend.name, time.perf_counter() - started)
    summary, predictions = evaluate_model(backend, tokenizer, records, cfg, show_progress=not args.no_progress,
                                          store=files.partial, model_path=model_path)
    trainable = args.trainable_params if args.trainable_params is not None else trainable_count(model_path)
    result = {"name": args.name, "model": model_path, "trainable_params": int(trainable),
              "instruction": cfg.eval.instruction, "prompt_style": cfg.data.prompt_style,
              "test_file": cfg.data.test_file, "num_questions": len(records), "world_size": parallel.world_size(),
              **summary}
    if parallel.is_main():
        save_config(cfg, files.config)
        write_tensorboard(files.tensorboard(cfg.eval.instruction), summary)
        path = write_outputs(files, result, predictions)
        shutil.rmtree(files.partial, ignore_errors=True)
        print_table(args.name, summary)
        print(f"wrote {path}")
    parallel.barrier()
    return result


@main_guard
def main(argv=None) -> Optional[dict]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, cfg = parse_args(__doc__, argv, _extra_args)
    return run(args, cfg)


if __name__ == "__main__":
    main()
    parallel.end_process()  # a rank of several: exit handlers, then exit without interpreter finalization
