"""Teacher-written evidence: a local teacher model writes the stage-2 ``evidence`` of every record that lacks one.

Stage 2 trains the model to write a short summary of the relevant evidence (docs/DESIGN.md §2). The paper's
summaries were written by a strong LLM (at most ~142 tokens each); records without an ``evidence`` field fall
back to the answer-bearing sentences (``train.data.evidence_for``). This entry lets any local Hugging Face
checkpoint be that teacher:

- **Prompt**: the teacher task of the prompt builder (``PromptBuilder.teacher``, ``data.prompt_style``, the
  teacher tokenizer's chat template per ``data.chat_template``): the question with exactly the documents stage 2
  will show (``docs_for_setting(record, "top5", K)``, K = ``evidence.num_docs`` or ``stage2.num_docs``), asking for
  the relevant parts as a short summary, or the fixed no-evidence sentence (``PromptBuilder.no_evidence()``)
  when none is relevant. Greedy, at most ``evidence.max_new_tokens`` tokens (default 160).
- **Generation** goes through evaluation's seam (``rag/backends.py``, ``eval.backend``): ``hf`` (batches split
  over the ranks), ``zero3`` (a teacher too large for one device, partitioned over the ranks) or ``vllm`` (one
  process, ``eval.tensor_parallel_size`` devices).
- **Output**: the input records in their order. A record that already has evidence is written back as its
  original line, byte for byte. A record that gets one keeps its own fields and spellings and gains ``evidence``
  and ``meta.evidence_by``: which teacher wrote it (``teacher``: its absolute path, ``fingerprint``: a hash of
  its config, tokenizer files and the names, sizes, first and last MiB of its weight files) and how
  (``backend``, ``dtype``, ``max_new_tokens``, ``decoding: greedy``, ``prompt_style``, ``chat_template``,
  ``num_docs``; ``truncated: true`` when the summary hit the token limit and was cut back to its last full
  sentence; ``no_evidence: true`` when the teacher found nothing relevant). With ``evidence.no_answer_docs:
  fixed``, records whose shown documents hold no gold answer get the no-evidence sentence without a teacher call
  (``evidence_by.rule`` says so). The file is written atomically (``neurorit.files``) by rank 0.
- **Resumable**: every finished batch goes to ``<out>.partial/`` at once (``rag.resume.BatchStore``, the same
  fingerprinted, atomic per-batch files as evaluation), so a killed run re-run with the same command continues
  where it stopped and writes the same file, byte for byte; the folder is removed at the end
  (``evidence.resume false`` starts over).

    python -m rag.write_evidence --config configs/embedded.yaml --teacher assets/base-model \\
        --in outputs/benchmark/train.jsonl --out outputs/benchmark/train.teacher.jsonl
    deepspeed --num_gpus 8 rag/write_evidence.py --config my.yaml --teacher /models/Llama-3-70B-Instruct \\
        --eval.backend zero3 --in data/nq_train.jsonl --out data/nq_train.evidence.jsonl
    .venv-vllm/bin/python -m rag.write_evidence --config my.yaml --teacher /models/Llama-3-70B-Instruct \\
        --eval.backend vllm --eval.tensor_parallel_size 8 --in data/nq_train.jsonl --out data/nq_train.evidence.jsonl

Then train stage 2 on it: ``--data.train_file <out>``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from typing import Optional

if __name__ == "__main__" and not __package__:  # run as a script (deepspeed rag/write_evidence.py): import from
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root, not from rag/


from model_patches import load_tokenizer
from model_patches.loading import resolve_model
from neurorit import parallel
from neurorit.config import ExperimentConfig, parse_args
from neurorit.errors import UserError, main_guard
from neurorit.files import atomic_write_text
from neurorit.metrics import normalize
from neurorit.prompts import PromptBuilder, TruncationCounter, encode, prompt_builder
from neurorit.records import Record, passage_has_answer, read_lines
from neurorit.settings import docs_for_setting
from rag.backends import generate_resumably, init_process, load_backend
from rag.evaluate import check_positions
from rag.generate import Decoding, eos_ids_of, length_batches, pad_id_of
from rag.resume import BatchStore, fingerprint

log = logging.getLogger("rag.write_evidence")

META_KEY = "evidence_by"
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_HASH_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


# ------------------------------------------------------------------------------------------------ the teacher
def check_teacher(path: str) -> str:
    """The teacher's checkpoint folder (a Hub id resolved through the Hub cache), or a one-line UserError when there
    is none."""
    if not path:
        raise UserError("no teacher model: pass --teacher PATH (a Hugging Face checkpoint folder or Hub id) or set "
                        "evidence.teacher")
    if not os.path.exists(path):
        try:
            path = resolve_model(path).path  # a Hub id
        except UserError as err:
            raise UserError(f"teacher model not found: {err}") from None
    if not os.path.isdir(path):
        raise UserError(f"teacher model not found: {path} is not a folder (expected a local Hugging Face "
                        f"checkpoint with config.json)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"teacher model not found: {path} has no config.json (expected a local Hugging Face "
                        f"checkpoint folder)")
    return path


def teacher_fingerprint(path: str, edge: int = 2**20) -> str:
    """16 hex digits naming a checkpoint's content cheaply (a 70B teacher is not hashed whole): its config and
    tokenizer files in full; of every weight file its name, size, first and last ``edge`` bytes."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        if name in _HASH_FILES:
            digest.update(f"{name}\0".encode())
            with open(full, "rb") as fh:
                digest.update(fh.read())
        elif name.endswith(_WEIGHT_SUFFIXES):
            size = os.path.getsize(full)
            digest.update(f"{name}\0{size}\0".encode())
            with open(full, "rb") as fh:
                digest.update(fh.read(edge))
                if size > edge:
                    fh.seek(max(edge, size - edge))
                    digest.update(fh.read(edge))
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- records
def read_rows(path: str, columns: dict) -> list[tuple[str, dict, Record]]:
    """``(line, raw object, parsed record)`` per non-empty line (``neurorit.records.read_lines``; ``columns`` is
    ``data.columns``)."""
    rows = list(read_lines(path, columns))
    if not rows:
        raise UserError(f"{path}: no records")
    return rows


def shown_docs(record: Record, num_docs: int):
    """The documents stage 2 shows with this record (``train.data.build_examples``' stage-2 recipe)."""
    return docs_for_setting(record, "top5", num_docs)


# ---------------------------------------------------------------------------------------------- the output
def _marker(text: str) -> re.Pattern:
    words = [re.escape(w) for w in text.replace(":", " : ").split()]
    return re.compile(r"\s*".join(words), re.IGNORECASE)


def is_no_evidence(text: str, builder: PromptBuilder) -> bool:
    """Empty, or the no-evidence sentence (its first three words are enough: "No relevant information ...")."""
    words, fixed = normalize(text).split(), normalize(builder.no_evidence()).split()
    return not words or words == fixed or (len(fixed) >= 3 and words[:3] == fixed[:3])


def clean_summary(text: str, builder: PromptBuilder, truncated: bool) -> tuple[str, dict]:
    """The teacher's output as a stage-2 target, and what was done to it: a repeated evidence cue at the start is
    dropped, anything from an answer marker on is cut, a summary cut by the token limit loses its unfinished last
    sentence, and nothing relevant becomes exactly ``builder.no_evidence()``."""
    text = text.strip()
    cue = _marker(builder.style.tails["teacher"]).match(text)
    if cue:
        text = text[cue.end():].strip()
    answer = _marker(builder.answer_marker).search(text)
    if answer:
        text = text[:answer.start()].strip()
    notes: dict = {}
    if truncated:
        notes["truncated"] = True
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        if ends:
            text = text[:ends[-1]].strip()
    if is_no_evidence(text, builder):
        return builder.no_evidence(), {**notes, "no_evidence": True}
    return text, notes


# ------------------------------------------------------------------------------------------------ the run
def write_evidence(cfg: ExperimentConfig, teacher: str, in_path: str, out_path: str, show_progress: bool = True,
                   local_rank: Optional[int] = None) -> dict:
    """Fill the evidence of ``in_path``'s records with ``teacher`` into ``out_path`` (see the module doc).
    Collective; every rank returns the summary after rank 0 wrote the file."""
    ev = cfg.evidence
    teacher = check_teacher(teacher)
    rows = read_rows(in_path, cfg.data.columns)
    init_process(cfg.eval.backend, cfg.runtime, local_rank)
    num_docs = ev.num_docs or cfg.stage2.num_docs
    tokenizer = load_tokenizer(teacher)
    builder = prompt_builder(cfg.data, tokenizer)
    settings = {"teacher": os.path.abspath(teacher), "fingerprint": teacher_fingerprint(teacher),
                "backend": cfg.eval.backend, "dtype": cfg.model.dtype, "max_new_tokens": ev.max_new_tokens,
                "decoding": "greedy", "prompt_style": builder.style.name, "chat_template": builder.chat is not None,
                "num_docs": num_docs}

    ask: list[int] = []  # row indices the teacher writes, in file order
    fixed: list[int] = []
    for i, (_, _, rec) in enumerate(rows):
        if rec.evidence.strip():
            continue
        if ev.no_answer_docs == "fixed" and not any(passage_has_answer(p, rec.answers)
                                                    for p in shown_docs(rec, num_docs)):
            fixed.append(i)
        else:
            ask.append(i)

    prompts: list[list[int]] = []
    trunc = TruncationCounter()
    for i in ask:
        rec = rows[i][2]
        try:
            enc = encode(tokenizer, builder.teacher(rec.question, shown_docs(rec, num_docs)), cfg.data.max_length,
                         with_output=False)
        except ValueError as err:
            raise UserError(f"record {rec.id}: {err}; raise data.max_length") from None
        trunc.add(enc, rec.id)
        prompts.append(enc.input_ids)
    if parallel.is_main():
        log.info("%s: %d records; %d already have evidence (kept), %d for the teacher %s, %d get the fixed "
                 "no-evidence sentence", in_path, len(rows), len(rows) - len(ask) - len(fixed), len(ask), teacher,
                 len(fixed))
        if trunc.truncated:
            log.warning(trunc.report("teacher prompts"))

    tokens: dict[int, list[int]] = {}
    partial = f"{out_path}.partial"
    if prompts:
        started = time.perf_counter()
        backend = load_backend(cfg.eval.backend, teacher, cfg, max_model_len=cfg.data.max_length + ev.max_new_tokens)
        if parallel.is_main():
            log.info("teacher on the %s backend, ready in %.2f s", backend.name, time.perf_counter() - started)
        check_positions(backend, prompts, ev.max_new_tokens)
        eos_ids = eos_ids_of(backend, tokenizer, builder.stop_ids)
        pad_id = pad_id_of(tokenizer, eos_ids)
        batches = length_batches(prompts, ev.batch_size)
        decoding = Decoding(ev.max_new_tokens, tuple(eos_ids), pad_id)
        store = BatchStore(partial, fingerprint(prompts, ev.batch_size, decoding, backend.name, teacher))
        tokens = generate_resumably(backend, prompts, batches, decoding, store, ev.resume,
                                    ("evidence", "record") if show_progress else None)

    counts = {"records": len(rows), "kept": len(rows) - len(ask) - len(fixed), "teacher": len(ask),
              "fixed": len(fixed), "no_evidence": len(fixed), "truncated": 0}
    lines = [line for line, _, _ in rows]
    for j, i in enumerate(ask):
        toks = tokens[j]
        text, notes = clean_summary(tokenizer.decode(toks, skip_special_tokens=True), builder,
                                    truncated=len(toks) >= ev.max_new_tokens)
        counts["no_evidence"] += int(bool(notes.get("no_evidence")))
        counts["truncated"] += int(bool(notes.get("truncated")))
        lines[i] = _filled(rows[i], text, {**settings, **notes}, cfg.data.columns)
    for i in fixed:
        lines[i] = _filled(rows[i], builder.no_evidence(),
                           {**settings, "teacher": None, "fingerprint": None, "backend": None,
                            "rule": "no gold answer in the shown documents: the fixed no-evidence sentence",
                            "no_evidence": True}, cfg.data.columns)
    if parallel.is_main():
        atomic_write_text(out_path, "".join(line + "\n" for line in lines))
        shutil.rmtree(partial, ignore_errors=True)
        print(f"wrote {out_path}: {counts['records']} records, {counts['kept']} kept as they were, "
              f"{counts['teacher']} written by the teacher ({counts['truncated']} cut at "
              f"evidence.max_new_tokens={ev.max_new_tokens}), {counts['no_evidence']} with the no-evidence sentence")
    parallel.barrier()
    return {"out": out_path, **counts, "settings": settings}


def _filled(row: tuple[str, dict, Record], evidence: str, by: dict, columns: dict) -> str:
    """The record's own row with its evidence and ``meta.evidence_by`` set, under the column names the user's
    ``data.columns`` gives them (so the file reads back with the same config); meta is the parsed one (a CSV holds
    it as JSON text)."""
    _, raw, record = row
    out = dict(raw)
    out[columns.get("evidence", "evidence")] = evidence
    out[columns.get("meta", "meta")] = {**record.meta, META_KEY: by}
    return json.dumps(out, ensure_ascii=False)


def default_out(in_path: str) -> str:
    stem = in_path[:-len(".jsonl")] if in_path.endswith(".jsonl") else in_path
    return f"{stem}.evidence.jsonl"


# --------------------------------------------------------------------------------------------------- entry
def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default="",
                        help="the teacher's local Hugging Face checkpoint folder (default: evidence.teacher)")
    parser.add_argument("--in", dest="in_path", default="",
                        help="records to fill (JSONL, any accepted spelling; default: data.train_file)")
    parser.add_argument("--out", default="",
                        help="where the filled records go (default: <in without .jsonl>.evidence.jsonl)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@main_guard
def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, cfg = parse_args(__doc__, argv, _extra_args)
    in_path = args.in_path or cfg.data.train_file
    return write_evidence(cfg, args.teacher or cfg.evidence.teacher, in_path, args.out or default_out(in_path),
                          show_progress=not args.no_progress, local_rank=args.local_rank)


if __name__ == "__main__":  # vLLM's engine starts its workers with spawn: create it only here
    main()
    parallel.end_process()  # a rank of several: exit handlers, then exit without interpreter finalization
