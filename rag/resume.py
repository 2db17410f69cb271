"""Resumable evaluation: every finished batch goes to disk at once, so a killed evaluation continues where it
stopped and ends with the same predictions file, byte for byte, as an uninterrupted run.

``<eval dir>/<name>.partial/`` holds ``meta.json`` (the run's fingerprint) and one ``batch-NNNNN.json`` per
finished batch (the batch's prompt indices and new token ids), each written to a temp file, fsynced and renamed:
a file either is complete or is not there. The rank that decoded a batch writes it (the eval dir must be shared by
the ranks, as for checkpoints). The fingerprint covers what decides the tokens: the prompts, the batch size,
``max_new_tokens``, the stop and pad ids, the backend and the checkpoint's files (names, sizes, modification
times); a folder of another fingerprint is discarded, never mixed in. Batches do not depend on the number of ranks,
so a run killed on 2 ranks may continue on 1 (or 8). ``rag/evaluate.py`` writes ``<name>.predictions.jsonl`` and
then ``<name>.eval.json`` (the done marker) atomically at the end, and removes the folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from typing import Optional, Sequence

from neurorit import parallel
from neurorit.files import atomic_write_text

log = logging.getLogger("rag.resume")

SHARD = re.compile(r"batch-(\d+)\.json")


def checkpoint_identity(path: str) -> list:
    """``[name, size, mtime_ns]`` of every file of a checkpoint folder (a re-export changes it)."""
    out = []
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                st = os.stat(full)
                out.append([name, st.st_size, st.st_mtime_ns])
    return out


def fingerprint(prompts: Sequence[Sequence[int]], batch_size: int, decoding, backend: str, model_path: str) -> str:
    """What decides a generation's outputs (``decoding``: ``rag.generate.Decoding``); batches of another are
    refused."""
    digest = hashlib.sha256()
    for p in prompts:
        digest.update((",".join(map(str, p)) + ";").encode())
    body = {"prompts": digest.hexdigest(), "n": len(prompts), "batch_size": batch_size,
            "max_new_tokens": decoding.max_new_tokens, "eos_ids": list(decoding.eos_ids), "pad_id": decoding.pad_id,
            "backend": backend,
            "model": os.path.abspath(model_path), "files": checkpoint_identity(model_path)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class MemoryStore:
    """No files: outputs stay in memory and are gathered over the ranks at the end (``evaluate_model`` alone)."""

    def __init__(self):
        self.local: dict[int, list[int]] = {}

    def open(self, batches: list[list[int]], resume: bool = True) -> set[int]:
        return set()

    def put(self, b: int, outputs: dict) -> None:
        self.local.update(outputs)

    def collect(self, batches: list[list[int]]) -> dict[int, list[int]]:
        """Collective: every rank's outputs, on every rank."""
        out: dict[int, list[int]] = {}
        for part in parallel.all_gather_objects(self.local):
            out.update(part)
        return out

    def remove(self) -> None:
        pass


class BatchStore:
    """Finished batches of one evaluation in ``directory`` (see the module doc)."""

    def __init__(self, directory: str, fp: str):
        self.directory, self.fp = directory, fp

    def _path(self, b: int) -> str:
        return os.path.join(self.directory, f"batch-{b:05d}.json")

    def _read(self, b: int, batches: list[list[int]]) -> Optional[dict[int, list[int]]]:
        """A finished batch's outputs, or None when the file is missing, unreadable or of another run."""
        try:
            with open(self._path(b), encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return None
        if (not isinstance(data, dict) or data.get("fingerprint") != self.fp or data.get("batch") != b
                or [i for i, _ in data.get("outputs", [])] != sorted(batches[b])):
            return None
        return {int(i): [int(t) for t in toks] for i, toks in data["outputs"]}

    def open(self, batches: list[list[int]], resume: bool = True) -> set[int]:
        """Collective. The indices of the batches already finished (rank 0 checks the folder, every rank gets the
        same set); a folder of another fingerprint, or ``resume=False``, starts over."""
        done: set[int] = set()
        if parallel.is_main():
            meta_path = os.path.join(self.directory, "meta.json")
            meta = None
            try:
                with open(meta_path, encoding="utf-8") as fh:
                    meta = json.load(fh)
            except (OSError, ValueError):
                pass
            if os.path.isdir(self.directory) and (not resume or not isinstance(meta, dict)
                                                   or meta.get("fingerprint") != self.fp):
                if resume and os.listdir(self.directory):
                    log.warning("%s belongs to another evaluation (other prompts, model or settings): "
                                "starting over", self.directory)
                shutil.rmtree(self.directory)
            os.makedirs(self.directory, exist_ok=True)
            for name in os.listdir(self.directory):
                if ".tmp." in name:  # a write cut by a kill: never renamed, so never counted
                    os.remove(os.path.join(self.directory, name))
            if meta is None or not os.path.isfile(meta_path):
                atomic_write_text(meta_path, json.dumps({"fingerprint": self.fp}) + "\n")
            for name in sorted(os.listdir(self.directory)):
                m = SHARD.fullmatch(name)
                if m and int(m.group(1)) < len(batches):
                    b = int(m.group(1))
                    if self._read(b, batches) is not None:
                        done.add(b)
                    else:
                        os.remove(self._path(b))
            if done:
                log.info("resuming: %d of %d batches already finished in %s", len(done), len(batches),
                         self.directory)
        return set(parallel.broadcast_object(sorted(done)))

    def put(self, b: int, outputs: dict) -> None:
        rows = [[int(i), [int(t) for t in outputs[i]]] for i in sorted(outputs)]
        atomic_write_text(self._path(b), json.dumps({"fingerprint": self.fp, "batch": b, "outputs": rows}) + "\n")

    def collect(self, batches: list[list[int]]) -> dict[int, list[int]]:
        """Collective: every batch's outputs, read by rank 0 after all ranks finished, on every rank."""
        parallel.barrier()
        out: Optional[dict[int, list[int]]] = None
        if parallel.is_main():
            out = {}
            for b in range(len(batches)):
                part = self._read(b, batches)
                if part is None:
                    raise RuntimeError(f"batch {b} is missing from {self.directory} after generation")
                out.update(part)
        return parallel.broadcast_object(out)

    def remove(self) -> None:
        if parallel.is_main():
            shutil.rmtree(self.directory, ignore_errors=True)
