"""Attention implementation choice: flash_attention_2 only with flash_attn + CUDA + half precision."""
import logging

import pytest
import torch

import model_patches.attention as attention
from model_patches import choose_attn_implementation
from neurorit.errors import UserError


def test_auto_on_cpu_is_sdpa_with_reason(caplog):
    with caplog.at_level(logging.INFO, logger="neurorit.model_patches"):
        impl, reason = choose_attn_implementation("auto", "cpu", torch.float32)
    assert impl == "sdpa" and "device is cpu" in reason and "dtype is float32" in reason
    assert [r.getMessage() for r in caplog.records] == [f"attention implementation: sdpa ({reason})"]


def test_flash_attention_when_everything_allows(monkeypatch):
    monkeypatch.setattr(attention, "_flash_attn_importable", lambda: True)
    assert choose_attn_implementation("auto", "cuda:0", torch.bfloat16)[0] == "flash_attention_2"
    assert choose_attn_implementation("auto", "cuda", "float16")[0] == "flash_attention_2"
    assert choose_attn_implementation("auto", "cuda", torch.float32)[0] == "sdpa"
    assert choose_attn_implementation("eager", "cuda", torch.bfloat16) == ("eager", "requested")


def test_requested_flash_without_flash_attn_falls_back_with_warning(monkeypatch, caplog):
    monkeypatch.setattr(attention, "_flash_attn_importable", lambda: False)
    with caplog.at_level(logging.INFO, logger="neurorit.model_patches"):
        impl, reason = choose_attn_implementation("flash_attention_2", "cuda", torch.bfloat16)
    assert impl == "sdpa" and "flash_attn does not import" in reason
    assert caplog.records[-1].levelno == logging.WARNING


def test_eager_when_torch_lacks_sdpa(monkeypatch):
    monkeypatch.delattr(torch.nn.functional, "scaled_dot_product_attention")
    assert choose_attn_implementation("auto", "cpu", torch.float32)[0] == "eager"


def test_unknown_choice_is_user_error():
    with pytest.raises(UserError, match="auto, flash_attention_2, sdpa, eager"):
        choose_attn_implementation("flash3", "cpu", torch.float32)
