"""Merge neuron deltas (and optionally deactivations) into the weights, and export a plain HF checkpoint.

``merge_into_weights`` folds in place (the live model changes, the deltas are removed). ``export_hf`` leaves the
live model alone: it walks the parameters one at a time (a ZeRO-3 gather of that one parameter plus its layer's
small deltas), folds a copy on rank 0, and writes safetensors shards + index + config that
``AutoModelForCausalLM.from_pretrained`` loads with no project code.

The export is atomic (``neurorit.files.atomic_dir``): rank 0 writes into a hidden temp folder beside ``out_dir``
and renames it into place only when every file is written, so a killed export never leaves a folder under that
name that loads or that a done-marker check accepts, and a previous export stays whole until the new one is
complete. A full disk stops every rank with the same one-line ``UserError`` (the previous export is kept).

Precision (issue 20, item 1). Folding happens in fp32. In a bf16 / fp16 model a small delta added to a weight
is partly rounded away (the bf16 spacing of a weight of 0.01-0.02 is 6e-5-1.2e-4), while training saw
``W x + delta path`` at full size. So ``export_hf`` measures, per folded weight, how much of the learned change
(folded minus base) rounding to the model's dtype would lose; where that is more than ``LOST_TOLERANCE`` of it, the
weight is written in fp32 (exact: base + delta), ``config.json`` says ``dtype: float32`` (the other, untouched
weights stay in their own dtype, which fp32 holds exactly) and records why under ``neurorit_export``, and one log
line says so. ``from_pretrained`` with its default ``dtype="auto"`` then loads the model training saw; loading it
in bf16 rounds the change away again.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import torch
from safetensors.torch import save_file

from model_patches.layouts.base import DELTA_INDEX, DELTA_NAMES
from model_patches.patcher import FFNPatcher, get_patcher, installed_patcher, unwrap
from neurorit import parallel
from neurorit.errors import UserError
from neurorit.files import atomic_dir, disk_full_error, is_disk_full

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
LOST_TOLERANCE = 0.01  # a folded weight is written in fp32 when rounding would lose more of its learned change
log = logging.getLogger("neurorit.model_patches")


def _layer_deltas(patcher: FFNPatcher, layer: int) -> Optional[tuple]:
    return patcher.neuron_deltas().get(layer)


def merge_into_weights(model: torch.nn.Module, fold_deactivation: bool = False) -> None:
    """Add the neuron deltas into the base weights (then remove them); with ``fold_deactivation`` also zero the
    down columns of deactivated neurons and clear the deactivation. The fold is computed in fp32 and rounded once
    to the weight's dtype: the forward output is unchanged in fp32; in bf16 / fp16 small deltas are partly rounded
    away (``export_hf`` keeps them by writing such weights in fp32)."""
    model = unwrap(model)
    patcher = get_patcher(model)
    roles = patcher.weight_roles()
    dead = patcher.deactivated() if fold_deactivation else {}
    for param in model.parameters():
        if id(param) not in roles:
            continue
        layer, role = roles[id(param)]
        deltas = _layer_deltas(patcher, layer)
        if deltas is None and layer not in dead:
            continue
        small = list(deltas[1:]) if deltas else []
        with parallel.gathered([param] + small, modifier_rank=0):
            with torch.no_grad():
                param.copy_(patcher.layout.fold(role, param.float(), deltas, dead.get(layer)))
    patcher.remove_neuron_deltas()
    if fold_deactivation:
        patcher.clear_deactivated()


def _shard_limit(max_shard_size) -> int:
    if isinstance(max_shard_size, int):
        return max_shard_size
    m = _SIZE.match(str(max_shard_size))
    if not m:
        raise UserError(f"max_shard_size {max_shard_size!r}: use an int or a size like '2GB', '500MB'")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def _persistent_buffers(model: torch.nn.Module):
    for mod_name, mod in model.named_modules():
        for name, buf in mod.named_buffers(recurse=False):
            if name not in mod._non_persistent_buffers_set:
                yield (f"{mod_name}.{name}" if mod_name else name), buf


class _ShardWriter:
    """Rank-0 accumulator of tensors into safetensors shards of at most ``limit`` bytes (temp names until done)."""

    def __init__(self, out_dir: str, limit: int):
        self.out_dir, self.limit = out_dir, limit
        self.current: dict[str, torch.Tensor] = {}
        self.size = 0
        self.files: list[tuple[str, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.current and self.size + nbytes > self.limit:
            self.flush()
        self.current[name] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        if not self.current:
            return
        tmp = os.path.join(self.out_dir, f".shard-{len(self.files):05d}.tmp")
        save_file(self.current, tmp, metadata={"format": "pt"})
        self.files.append((tmp, list(self.current)))
        self.current, self.size = {}, 0

    def finish(self) -> None:
        self.flush()
        if len(self.files) == 1:
            os.replace(self.files[0][0], os.path.join(self.out_dir, "model.safetensors"))
            return
        weight_map = {}
        for i, (tmp, names) in enumerate(self.files):
            final = f"model-{i + 1:05d}-of-{len(self.files):05d}.safetensors"
            os.replace(tmp, os.path.join(self.out_dir, final))
            weight_map.update({n: final for n in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        tmp = os.path.join(self.out_dir, ".index.tmp")
        with open(tmp, "w") as fh:
            json.dump(index, fh, indent=2)
        os.replace(tmp, os.path.join(self.out_dir, "model.safetensors.index.json"))


@dataclass
class _Precision:
    """What folding cost in the model's dtype: the weights kept in fp32 and the largest share of a learned change
    that rounding them would have lost."""

    dtype: Optional[torch.dtype] = None  # the dtype of the folded weights in the model
    kept: list[str] = field(default_factory=list)
    worst: float = 0.0

    def fold(self, name: str, patcher: FFNPatcher, role: str, value: torch.Tensor, deltas, dead) -> torch.Tensor:
        """``value`` folded in fp32, then rounded to its own dtype unless that loses more than ``LOST_TOLERANCE``
        of the change (then kept in fp32)."""
        folded = patcher.layout.fold(role, value.float(), deltas, dead)
        if value.dtype == torch.float32:
            return folded
        self.dtype = value.dtype
        rounded = folded.to(value.dtype)
        change = float((folded - value.float()).norm())
        lost = float((rounded.float() - folded).norm()) / change if change > 0 else 0.0
        self.worst = max(self.worst, lost)
        if lost <= LOST_TOLERANCE:
            return rounded
        self.kept.append(name)
        return folded

    def note(self) -> Optional[dict]:
        """The ``neurorit_export`` entry of config.json (None: every weight kept its dtype)."""
        if not self.kept:
            return None
        dtype = str(self.dtype).replace("torch.", "")
        return {"dtype": "float32", "model_dtype": dtype, "weights_in_float32": len(self.kept),
                "lost_if_rounded": round(self.worst, 4), "tolerance": LOST_TOLERANCE,
                "reason": f"folding the trained neuron deltas into {dtype} weights would round away up to "
                          f"{self.worst:.1%} of the learned change; those weights are written in float32 "
                          f"(load in float32 to keep what training learned)"}


def export_hf(model: torch.nn.Module, out_dir: str, tokenizer=None, fold_deactivation: bool = False,
              max_shard_size="2GB") -> None:
    """Write a plain Hugging Face checkpoint of ``model`` with deltas (and, if asked, deactivations) folded in.

    Every rank must call it (ZeRO-3 gathers are collective); rank 0 alone writes. The live model is unchanged.
    """
    model = unwrap(model)
    patcher = installed_patcher(model)
    roles = patcher.weight_roles() if patcher is not None else {}
    dead = patcher.deactivated() if (patcher is not None and fold_deactivation) else {}
    limit = _shard_limit(max_shard_size)
    precision = _Precision()
    error: Optional[str] = None
    with contextlib.ExitStack() as stack:
        writer = None
        if parallel.is_main():
            try:
                tmp_dir = stack.enter_context(atomic_dir(out_dir, kept=_kept(out_dir)))
                writer = _ShardWriter(tmp_dir, limit)
            except UserError as err:
                error = str(err)
        for name, param in model.named_parameters():  # every rank gathers, even after rank 0 failed to write
            if name.rsplit(".", 1)[-1] in DELTA_NAMES:
                continue
            layer, role = roles.get(id(param), (None, None))
            deltas = _layer_deltas(patcher, layer) if layer is not None else None
            small = list(deltas[1:]) if deltas else []
            with parallel.gathered([param] + small):
                if writer is not None and error is None:
                    value = param.detach()
                    if role is not None and (deltas is not None or layer in dead):
                        value = precision.fold(name, patcher, role, value, deltas, dead.get(layer))
                    error = _write(out_dir, lambda: writer.add(name, value.to("cpu", copy=True)))
        if writer is not None and error is None:
            error = _write(out_dir, lambda: _finish_files(model, writer, tmp_dir, tokenizer, precision.note()))
            if error is None and precision.kept:
                log.warning("export %s: %s (%d weights; config.json dtype float32)", out_dir,
                            precision.note()["reason"], len(precision.kept))
        error = parallel.broadcast_object(error)
        if error is not None:  # every rank stops with the same line; rank 0's temp folder is removed, not renamed
            raise UserError(error)
    parallel.barrier()  # rank 0 renamed the finished folder into place


def _kept(out_dir: str) -> str:
    return (f"the previous export {out_dir} is kept as it was" if os.path.isdir(out_dir)
            else f"no folder {out_dir} was created")


def _write(out_dir: str, fn) -> Optional[str]:
    """Run a write of rank 0; a full disk becomes the error message (broadcast to every rank), else None."""
    try:
        fn()
    except Exception as err:
        if is_disk_full(err):
            return str(disk_full_error(out_dir, err, _kept(out_dir)))
        raise
    return None


def _finish_files(model, writer: "_ShardWriter", folder: str, tokenizer, note: Optional[dict]) -> None:
    for name, buf in _persistent_buffers(model):
        if not name.endswith(DELTA_INDEX):
            writer.add(name, buf.detach().to("cpu", copy=True))
    writer.finish()
    config = model.config
    if note is not None:  # the live model's config is left as it is
        config = copy.deepcopy(config)
        config.dtype = torch.float32
        config.neurorit_export = note
    config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    if tokenizer is not None:  # the chat template inside tokenizer_config.json, where old and new servers read it
        tokenizer.save_pretrained(folder, save_jinja_files=False)
