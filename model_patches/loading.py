"""Load a causal LM checkpoint for this project: path or Hub id, dtype, attention choice, ZeRO-3 partitioned load.

A model is a local checkpoint folder or a Hugging Face Hub id (``org/name``, optionally ``org/name@revision``),
resolved through ``huggingface_hub``'s cache (``resolve_model``): ``HF_HUB_OFFLINE=1`` uses the cache alone, and
the resolved commit hash is the model's revision for run fingerprints (``model_source``).
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from model_patches.attention import choose_attn_implementation
from neurorit import parallel
from neurorit.errors import UserError

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise UserError(f"dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


# Files a model snapshot needs; other weight formats (Llama's original/*.pth, GGUF, TF, Flax) are not fetched.
HUB_IGNORE = ["original/*", "*.pth", "*.gguf", "*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.ot", "*.tflite"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(@[\w./-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model came from: the local folder it loads from, and for a Hub id the id and commit hash."""

    path: str  # a local folder (a snapshot inside the Hub cache for a Hub id)
    repo_id: Optional[str] = None
    revision: Optional[str] = None  # the commit hash; for a local folder inside a Hub cache snapshot, its hash

    def fingerprint(self) -> dict:
        """What a run's fingerprint records about its model."""
        return {"model": self.repo_id or os.path.abspath(self.path), "revision": self.revision}


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or env.strip().lower() in ("1", "true", "yes", "on")


def _snapshot_revision(path: str) -> Optional[str]:
    """The commit hash of a folder that is a Hub cache snapshot (``.../snapshots/<hash>``), else None."""
    parent, name = os.path.split(os.path.normpath(os.path.abspath(path)))
    return name if _COMMIT.match(name) and os.path.basename(parent) == "snapshots" else None


def _download(repo_id: str, revision: Optional[str], offline: bool) -> str:
    """``snapshot_download`` with its errors as one line each (the id, what happened, what to do)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return snapshot_download(repo_id, revision=revision, ignore_patterns=HUB_IGNORE, local_files_only=offline)
    except GatedRepoError:
        raise UserError(f"model {where}: gated on the Hugging Face Hub; accept its licence on the Hub and log in "
                        f"(hf auth login, or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise UserError(f"model {where}: not a local folder and not a model on the Hugging Face Hub (or private: "
                        f"log in with hf auth login, or HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise UserError(f"model {where}: the Hub repository has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        how = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        raise UserError(f"model {where}: not a local folder, and not in the Hugging Face cache while {how}; "
                        f"download it where the Hub is reachable (hf download {repo_id}"
                        f"{f' --revision {revision}' if revision else ''}) into the cache this run "
                        f"reads (HF_HOME / HF_HUB_CACHE), or give a local checkpoint folder") from None


def resolve_model(path: str) -> ModelSource:
    """A local checkpoint folder as it is; a Hub id (``org/name`` or ``org/name@revision``) through the Hub cache
    (``HF_HUB_OFFLINE=1``: the cache alone). UserError (one line) when neither gives a folder."""
    if os.path.isdir(path):
        return ModelSource(path=path, revision=_snapshot_revision(path))
    if not path or not _HUB_ID.match(path) or os.path.isabs(path) or path.startswith("."):
        raise UserError(f"model path does not exist or is not a folder: {path}")
    repo_id, _, revision = path.partition("@")
    folder = _download(repo_id, revision or None, _hub_offline())
    return ModelSource(path=folder, repo_id=repo_id, revision=_snapshot_revision(folder))


def model_source(path: str) -> dict:
    """``{"model", "revision", "path"}`` of a model path or Hub id, for run fingerprints and model cards."""
    source = resolve_model(path)
    return {**source.fingerprint(), "path": source.path}


def load_causal_lm(path: str, dtype="float32", attn_implementation: str = "auto", ds_config: Optional[dict] = None,
                   device=None):
    """``AutoModelForCausalLM`` from a local checkpoint folder or a Hub id (``resolve_model``). Under a ZeRO-3
    ``ds_config`` the weights load partitioned (``HfDeepSpeedConfig`` kept alive) and stay where DeepSpeed puts
    them; otherwise they go to ``device`` (default: this rank's device), on an accelerator straight from the
    files (``load_placement``)."""
    from transformers import AutoModelForCausalLM

    folder = resolve_model(path).path
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise UserError(f"not a Hugging Face checkpoint (no config.json): {folder}")
    torch_dtype = _dtype(dtype)
    _warn_if_rounding(folder, torch_dtype)
    device = torch.device(device) if device is not None else parallel.info().device
    impl, _ = choose_attn_implementation(attn_implementation, device, torch_dtype)
    zero3 = ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3
    with parallel.zero3_loading(ds_config):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, attn_implementation=impl,
                                                     **load_placement(device, zero3))
    if not zero3:
        model.to(device)
    return model


def load_placement(device: torch.device, zero3: bool) -> dict:
    """``from_pretrained`` arguments that place the weights. On an accelerator (no ZeRO-3) every tensor loads from
    the files straight onto ``device`` (``device_map``), so a rank never holds the whole model in host memory
    (eight ranks of a 70B model in bf16 would need 1.1 TB of it at once). On CPU, or under ZeRO-3 (DeepSpeed
    places the partitions), nothing: the model loads on the host as it always did."""
    return {} if zero3 or device.type == "cpu" else {"device_map": {"": device}}


def _rounding_note(folder: str, torch_dtype: torch.dtype) -> Optional[dict]:
    """The ``neurorit_export`` note of an export that kept weights in fp32 because bf16 / fp16 would round its
    learned change away (``model_patches/export.py``), when it is to be loaded in a 16-bit dtype; else None."""
    if torch_dtype == torch.float32:
        return None
    with open(os.path.join(folder, "config.json")) as fh:
        return json.load(fh).get("neurorit_export")


def refuse_rounding(path: str, dtype: str, who: str) -> None:
    """A one-line UserError where ``who`` (a stage that trains on, or an engine that serves, ``path``) would load
    an export in a 16-bit ``dtype`` that rounds away what its training learned: training on it would start from
    something else than what was learned, and vLLM would serve something else than what was trained."""
    folder = resolve_model(path).path
    note = _rounding_note(folder, _dtype(dtype))
    if note:
        raise UserError(f"{who} would load {folder} in {dtype}, rounding away up to {note['lost_if_rounded']:.1%} "
                        f"of what its training learned ({note['weights_in_float32']} weights kept in float32): run "
                        f"this step with --model.dtype float32 (scripts/plan.py --help: its memory)")


def _warn_if_rounding(folder: str, torch_dtype: torch.dtype) -> None:
    """An export that kept weights in fp32 (``_rounding_note``) loses that change again when loaded in a 16-bit
    dtype: say so, once, on rank 0 (training and vLLM refuse instead: ``refuse_rounding``)."""
    if not parallel.is_main():
        return
    note = _rounding_note(folder, torch_dtype)
    if note:
        print(f"warning: {folder} keeps fp32 weights whose learned change {torch_dtype} would round away "
              f"({note}); loading it in {torch_dtype} loses that change: use model.dtype float32 to keep it",
              file=sys.stderr, flush=True)


def load_tokenizer(path: str):
    """The checkpoint's tokenizer (a local folder or a Hub id), or a one-line UserError naming the folder."""
    from transformers import AutoTokenizer

    path = resolve_model(path).path
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise UserError(f"no tokenizer could be loaded from {path}: {str(err).splitlines()[0]}") from None
