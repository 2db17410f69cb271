"""Load a causal LM checkpoint for this project: path checks, dtype, attention choice, ZeRO-3 partitioned load."""
from __future__ import annotations

import os
from typing import Optional

import torch

from model_patches.attention import choose_attn_implementation
from neurorit import dist
from neurorit.errors import UserError

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise UserError(f"dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_causal_lm(path: str, dtype="float32", attn_implementation: str = "auto", ds_config: Optional[dict] = None,
                   device=None):
    """``AutoModelForCausalLM`` from a local checkpoint folder. Under a ZeRO-3 ``ds_config`` the weights load
    partitioned (``HfDeepSpeedConfig`` kept alive) and stay where DeepSpeed puts them; otherwise they move to
    ``device`` (default: this rank's device)."""
    from transformers import AutoModelForCausalLM

    if not os.path.isdir(path):
        raise UserError(f"model path does not exist or is not a folder: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"not a Hugging Face checkpoint (no config.json): {path}")
    torch_dtype = _dtype(dtype)
    device = torch.device(device) if device is not None else dist.info().device
    impl, _ = choose_attn_implementation(attn_implementation, device, torch_dtype)
    zero3 = ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3
    with dist.zero3_loading(ds_config):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation=impl)
    if not zero3:
        model.to(device)
    return model


def load_tokenizer(path: str):
    """The checkpoint's tokenizer, or a one-line UserError naming the folder."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise UserError(f"no tokenizer could be loaded from {path}: {str(err).splitlines()[0]}") from None
