"""Neuron statistics: per-example results, per-rank accumulation, atomic resumable shards, cross-rank reduction.

Per example (one mining pair: a relevant and an irrelevant prompt) a rank keeps its status, how many of its
prompts were truncated, F on each prompt, and each side's top-k list (flat neuron ids and raw scores). Per
neuron it accumulates, per side, the attribution divided by the example's largest |attribution|, as a
fixed-point integer (``FIXED_ONE`` = 1.0), so that every reduction order gives the same bits.

Shards: each rank writes ``shard-g<generation>-r<rank>.safetensors`` every N examples (temp file + rename). A
shard names the example indices it holds and the run it belongs to (a fingerprint of data, model and settings).
A rerun reads every shard, skips the examples they hold and writes a new generation, so no example is lost or
counted twice, whatever the number of ranks. ``reduce_stats`` scatters every rank's part into global tensors and
all-reduces them (SUM): integers and values with one contributor each, identical on 1 or N ranks.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from neurorit import parallel
from neurorit.errors import UserError
from neurorit.files import atomic_write_text

SIDES = ("relevant", "irrelevant")
OK, NO_ANSWER_TOKEN, EMPTY_PASSAGE, NON_FINITE, TOO_LONG = range(5)
STATUS_NAMES = {OK: "ok", NO_ANSWER_TOKEN: "answer has no token", EMPTY_PASSAGE: "empty passage",
                NON_FINITE: "non-finite attribution", TOO_LONG: "question does not fit the context"}
FIXED_ONE = 2 ** 40  # fixed-point unit of normalized sums: |value| <= 1 per example, so 2^23 examples fit int64


@dataclass
class ExampleResult:
    """What one example contributes. ``attributions`` ``[2, layers, d_ff]`` is None unless status is OK."""

    index: int
    status: int
    truncated: int
    topk_ids: torch.Tensor  # [2, k] long, -1 = empty
    topk_scores: torch.Tensor  # [2, k] float64
    f_input: torch.Tensor  # [2] float64
    attributions: Optional[torch.Tensor] = None


def fixed_point_normalized(attr: torch.Tensor) -> torch.Tensor:
    """``attr / max|attr|`` per side as int64 fixed point (``[2, L, W]``)."""
    peak = attr.abs().flatten(1).max(dim=1).values.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.round(attr.double() / peak.view(-1, 1, 1) * FIXED_ONE).long()


@dataclass
class RankStats:
    """The examples one rank processed in this run (or one shard on disk)."""

    layers: int
    width: int
    top_k: int
    indices: list[int] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    topk_ids: list[torch.Tensor] = field(default_factory=list)
    topk_scores: list[torch.Tensor] = field(default_factory=list)
    f_input: list[torch.Tensor] = field(default_factory=list)
    norm_sum: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.norm_sum is None:
            self.norm_sum = torch.zeros(2, self.layers, self.width, dtype=torch.long)

    def add(self, r: ExampleResult) -> None:
        self.indices.append(r.index)
        self.status.append(r.status)
        self.truncated.append(r.truncated)
        self.topk_ids.append(r.topk_ids)
        self.topk_scores.append(r.topk_scores)
        self.f_input.append(r.f_input)
        if r.attributions is not None:
            self.norm_sum += fixed_point_normalized(r.attributions)

    def __len__(self) -> int:
        return len(self.indices)

    def tensors(self) -> dict[str, torch.Tensor]:
        k = self.top_k
        stack = (lambda xs, shape, dtype: torch.stack(xs) if xs else torch.zeros(shape, dtype=dtype))
        return {
            "indices": torch.tensor(self.indices, dtype=torch.long),
            "status": torch.tensor(self.status, dtype=torch.long),
            "truncated": torch.tensor(self.truncated, dtype=torch.long),
            "topk_ids": stack(self.topk_ids, (0, 2, k), torch.long),
            "topk_scores": stack(self.topk_scores, (0, 2, k), torch.float64),
            "f_input": stack(self.f_input, (0, 2), torch.float64),
            "norm_sum": self.norm_sum,
        }

    def save(self, path: str, run_fingerprint: str) -> None:
        """Atomic write: temp file in the same folder, then rename."""
        tmp = f"{path}.tmp{os.getpid()}"
        save_file({k: v.contiguous() for k, v in self.tensors().items()}, tmp, metadata={"run": run_fingerprint})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, layers: int, width: int, top_k: int) -> "RankStats":
        t = load_file(path)
        part = cls(layers, width, top_k, norm_sum=t["norm_sum"])
        part.indices, part.status, part.truncated = (t[n].tolist() for n in ("indices", "status", "truncated"))
        part.topk_ids, part.topk_scores, part.f_input = (list(t[n]) for n in ("topk_ids", "topk_scores", "f_input"))
        return part


# ------------------------------------------------------------------------------------------------- shards
def shard_paths(stats_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(stats_dir, "shard-g*-r*.safetensors")))


def shard_run(path: str) -> str:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        return (fh.metadata() or {}).get("run", "")


@dataclass
class ResumeState:
    """What earlier runs left: the example indices they hold, their shard files, the next generation number."""

    done: set[int]
    paths: list[str]
    generation: int


def scan_shards(stats_dir: str, run_fingerprint: str, layers: int, width: int, top_k: int) -> ResumeState:
    """Rank 0 reads the shards of earlier runs (refusing those of another run); every rank gets the answer."""
    state = None
    if parallel.is_main():
        os.makedirs(stats_dir, exist_ok=True)
        for tmp in glob.glob(os.path.join(stats_dir, "*.tmp*")):
            os.remove(tmp)  # a write that a crash interrupted; its previous version is still in place
        paths, done, generation = shard_paths(stats_dir), set(), 0
        for path in paths:
            if shard_run(path) != run_fingerprint:
                raise UserError(f"{path} belongs to another mining run (different data, model or settings); "
                                f"remove {stats_dir} or choose another mining.output_dir")
            held = RankStats.load(path, layers, width, top_k).indices
            if done & set(held):
                raise UserError(f"{path} repeats examples held by another shard; remove {stats_dir} and rerun")
            done |= set(held)
            generation = max(generation, int(os.path.basename(path).split("-")[1][1:]) + 1)
        state = ResumeState(done, paths, generation)
    return parallel.broadcast_object(state)


CHOICES_FILE = "choices.json"  # beside the shards: mining's resolved auto choices, which a resume reuses


def record_choices(stats_dir: str, zero3: bool, chunk_rows: int) -> None:
    """Rank 0, once the shards in ``stats_dir`` are known to be this run's: the ZeRO-3 choice and chunk rows it
    mines with, for a resume (``read_choices``)."""
    atomic_write_text(os.path.join(stats_dir, CHOICES_FILE),
                      json.dumps({"zero3": zero3, "chunk_rows": chunk_rows}, sort_keys=True) + "\n")


def read_choices(stats_dir: str) -> Optional[dict]:
    """What ``record_choices`` wrote in ``stats_dir``, or None."""
    path = os.path.join(stats_dir, CHOICES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def shard_path(stats_dir: str, generation: int, rank: int) -> str:
    return os.path.join(stats_dir, f"shard-g{generation:04d}-r{rank:05d}.safetensors")


# ---------------------------------------------------------------------------------------------- reduction
@dataclass
class NeuronStats:
    """The reduced statistics of a whole mining run (identical on every rank)."""

    example_ids: list[str]
    status: torch.Tensor  # [N] long, -1 = not processed
    truncated: torch.Tensor  # [N] long: prompts of the example whose passage was cut
    topk_ids: torch.Tensor  # [N, 2, k] long, -1 = empty
    topk_scores: torch.Tensor  # [N, 2, k] float64
    f_input: torch.Tensor  # [N, 2] float64
    norm_sum: torch.Tensor  # [2, L, W] long, fixed point (FIXED_ONE = 1.0)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.norm_sum.shape[1:])

    def ok(self) -> torch.Tensor:
        return self.status == OK

    def counts(self, examples: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[2, L, W]``: in how many examples' top-k each neuron appears, per side (OK examples only; only those
        where the ``[N]`` bool mask ``examples`` is true, when given: e.g. one half of the examples)."""
        return self._scatter(torch.ones_like(self.topk_ids), examples)

    def score_sums(self, examples: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[2, L, W]``: summed top-k scores, each divided by its example's top score (OK examples only)."""
        top = self.topk_scores[:, :, :1].clamp_min(torch.finfo(torch.float64).tiny)
        return self._scatter(self.topk_scores / top, examples)

    def _scatter(self, values: torch.Tensor, examples: Optional[torch.Tensor] = None) -> torch.Tensor:
        layers, width = self.shape
        out = torch.zeros(2, layers * width, dtype=values.dtype)
        ok = self.ok() if examples is None else self.ok() & examples
        for side in range(2):
            ids, vals = self.topk_ids[ok, side].flatten(), values[ok, side].flatten()
            keep = ids >= 0
            out[side].index_add_(0, ids[keep], vals[keep])
        return out.view(2, layers, width)

    def mean_normalized(self) -> torch.Tensor:
        """``[2, L, W]``: mean over OK examples of attribution / the example's max |attribution|."""
        return self.norm_sum.double() / FIXED_ONE / max(int(self.ok().sum()), 1)

    def status_counts(self) -> dict[str, int]:
        out = {STATUS_NAMES[s]: int((self.status == s).sum()) for s in STATUS_NAMES}
        out["passages truncated"] = int((self.truncated > 0).sum())
        out["not processed"] = int((self.status < 0).sum())
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"status": self.status, "truncated": self.truncated, "topk_ids": self.topk_ids,
                "topk_scores": self.topk_scores, "f_input": self.f_input, "norm_sum": self.norm_sum}

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp{os.getpid()}"
        save_file({k: v.contiguous() for k, v in self.tensors().items()}, tmp,
                  metadata={"example_ids": json.dumps(self.example_ids)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "NeuronStats":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            ids = json.loads(fh.metadata()["example_ids"])
        return cls(example_ids=ids, **load_file(path))


def reduce_stats(parts: list[RankStats], example_ids: list[str], layers: int, width: int,
                 top_k: int) -> NeuronStats:
    """Scatter this rank's parts into global tensors and all-reduce (SUM); every example must be held once."""
    n = len(example_ids)
    held = torch.zeros(n, dtype=torch.long)
    status1 = torch.zeros(n, dtype=torch.long)  # status + 1, so that 0 means "nobody"
    truncated = torch.zeros(n, dtype=torch.long)
    ids1 = torch.zeros(n, 2, top_k, dtype=torch.long)  # id + 1
    scores = torch.zeros(n, 2, top_k, dtype=torch.float64)
    f_input = torch.zeros(n, 2, dtype=torch.float64)
    norm_sum = torch.zeros(2, layers, width, dtype=torch.long)
    for part in parts:
        if not len(part):
            norm_sum += part.norm_sum
            continue
        t = part.tensors()
        idx = t["indices"]
        held.index_add_(0, idx, torch.ones_like(idx))
        status1[idx] = t["status"] + 1
        truncated[idx] = t["truncated"]
        ids1[idx] = t["topk_ids"] + 1
        scores[idx] = t["topk_scores"]
        f_input[idx] = t["f_input"]
        norm_sum += t["norm_sum"]
    for tensor in (held, status1, truncated, ids1, scores, f_input, norm_sum):
        parallel.all_reduce_sum(tensor)
    if n and int(held.max()) > 1:
        raise RuntimeError("an example was counted twice across ranks/shards")
    return NeuronStats(example_ids, status1 - 1, truncated, ids1 - 1, scores, f_input, norm_sum)
