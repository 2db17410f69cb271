"""The FFN layout registry: ``config.model_type`` -> layout class, and the look-ups built on it.

``get_ffn_layout(model)`` returns the model's layout object (``model_patches/layouts/``): where each layer's FFN
neurons live and how the patched FFN computes. ``model_fingerprint(model)`` is what a neuron map records about
the model it was mined on; ``unwrap(model)`` is the Hugging Face model inside a DeepSpeed engine. A new model type of a known layout is one line in ``LAYOUTS``; a new layout is one
module under ``layouts/`` plus its import and lines here.
"""
from __future__ import annotations

import torch

from model_patches.layouts.base import FFNLayout
from model_patches.layouts.fused import FusedGateUpLayout
from model_patches.layouts.gated import GatedLayout
from model_patches.layouts.moe import MoEExpertsLayout
from neurorit.errors import UserError

LAYOUTS: dict[str, type[FFNLayout]] = {
    "llama": GatedLayout,
    "mistral": GatedLayout,
    "qwen2": GatedLayout,
    "qwen3": GatedLayout,
    "gemma": GatedLayout,
    "gemma2": GatedLayout,
    "phi3": FusedGateUpLayout,
    "mixtral": MoEExpertsLayout,
    "qwen2_moe": MoEExpertsLayout,
}
SUPPORTED_ARCHITECTURES = tuple(LAYOUTS)


def get_ffn_layout(model: torch.nn.Module) -> FFNLayout:
    """The layout of ``model`` (a causal LM); a UserError names the supported architectures otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    layout = LAYOUTS.get(model_type) if isinstance(model_type, str) else None
    if layout is None:
        raise UserError(f"architecture {model_type!r} ({type(model).__name__}) is not supported; "
                        f"supported: {', '.join(LAYOUTS)}")
    return layout.from_model(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a DeepSpeed engine (or the model itself)."""
    from transformers import PreTrainedModel

    while not isinstance(model, PreTrainedModel) and isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def model_fingerprint(model: torch.nn.Module) -> dict:
    """Architecture, number of decoder layers and FFN neuron-space width of ``model`` (engine or plain)."""
    model = unwrap(model)
    layout = get_ffn_layout(model)
    return {"architecture": model.config.model_type, "num_layers": len(layout.layers(model)),
            "intermediate_size": layout.intermediate_size}
