"""Attention implementation choice: FlashAttention-2 when it can run, else sdpa, else eager (one log line)."""
from __future__ import annotations

import importlib.util
import logging

import torch

from neurorit.errors import UserError

log = logging.getLogger("neurorit.model_patches")
ATTN_CHOICES = ("auto", "flash_attention_2", "sdpa", "eager")


def _flash_attn_importable() -> bool:
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
    except Exception:  # a broken CUDA build raises all sorts of errors at import
        return False
    return True


def _as_dtype(dtype) -> torch.dtype:
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def choose_attn_implementation(requested: str, device, dtype) -> tuple[str, str]:
    """``(implementation, reason)`` for ``requested`` in auto / flash_attention_2 / sdpa / eager.

    auto = flash_attention_2 if flash_attn imports, the device is CUDA and dtype is bf16/fp16; else sdpa (when
    torch has it); else eager. An explicit flash_attention_2 that cannot run falls back the same way, as a warning.
    """
    if requested not in ATTN_CHOICES:
        raise UserError(f"attn_implementation {requested!r}: choose one of {', '.join(ATTN_CHOICES)}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = _as_dtype(dtype)
    if requested in ("sdpa", "eager"):
        impl, reason = requested, "requested"
    else:
        blockers = []
        if not _flash_attn_importable():
            blockers.append("flash_attn does not import")
        if device.type != "cuda":
            blockers.append(f"device is {device.type}")
        if dtype not in (torch.bfloat16, torch.float16):
            blockers.append(f"dtype is {str(dtype).replace('torch.', '')}")
        if not blockers:
            impl, reason = "flash_attention_2", "flash_attn imports, CUDA device, half precision"
        else:
            has_sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
            impl = "sdpa" if has_sdpa else "eager"
            reason = f"flash_attention_2 unavailable ({'; '.join(blockers)})"
            if not has_sdpa:
                reason += "; torch has no scaled_dot_product_attention"
    level = logging.WARNING if requested == "flash_attention_2" and impl != requested else logging.INFO
    log.log(level, "attention implementation: %s (%s)", impl, reason)
    return impl, reason
