"""The LoRA baseline, through peft: adapters on every linear layer of every decoder layer (attention and FFN),
their rank chosen so that the trainable parameters match Neuro-RIT's (both stages) within 10%, merged into the
plain weights at export.

The adapters are injected in place (``peft.inject_adapter_in_model``), so the model keeps its Hugging Face
class and the training loop, the strategy and ZeRO-3 see an ordinary module with a few more parameters. Each
``lora_A`` is re-initialised from a generator seeded by ``runtime.seed`` and the module name, so every rank and
every world size starts from the same adapters (``lora_B`` starts at zero, as in peft). At export every rank
gathers each base weight with its two adapters, rank 0 merges them (``W += scale * B @ A``), and the peft
layers are replaced by their base layers: the export is a plain checkpoint like every other method's.
"""
from __future__ import annotations

import math
import zlib

import torch

from model_patches import get_ffn_layout
from neurorit import parallel

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "gate_up_proj", "qkv_proj")


def _shape(param: torch.nn.Parameter) -> tuple[int, ...]:
    return tuple(getattr(param, "ds_shape", param.shape))


def lora_linears(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{module name: (in_features, out_features)}`` of the linears LoRA adapts (inside decoder layers only)."""
    layers = {id(m) for m in get_ffn_layout(model).layers(model)}
    out = {}
    for lname, layer in model.named_modules():
        if id(layer) not in layers:
            continue
        for name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_MODULES:
                rows, cols = _shape(module.weight)
                out[f"{lname}.{name}"] = (cols, rows)
    return out


def rank_to_match(model: torch.nn.Module, params: int) -> int:
    """The LoRA rank whose trainable count (``r x sum(in + out)``) is nearest ``params`` (at least 1)."""
    per_rank = sum(i + o for i, o in lora_linears(model).values())
    return max(1, round(params / per_rank))


def add_lora(model: torch.nn.Module, rank: int, alpha: float, seed: int) -> list[torch.nn.Parameter]:
    """Inject rank-``rank`` adapters; returns them (the only trainable parameters)."""
    from peft import LoraConfig, inject_adapter_in_model

    names = sorted(lora_linears(model))
    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, bias="none",
                        target_modules=names)
    inject_adapter_in_model(config, model)
    params = []
    for name, module in model.named_modules():
        if name in names:
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            with torch.no_grad():
                a.copy_(torch.nn.init.kaiming_uniform_(torch.empty(a.shape), a=math.sqrt(5), generator=gen))
                b.zero_()
            params += [a, b]
    return params


def merge_lora(model: torch.nn.Module) -> int:
    """Fold every adapter into its base weight and put the base layers back; collective under ZeRO-3.
    Returns how many layers were merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        with parallel.gathered([base.weight, a, b], modifier_rank=0):
            with torch.no_grad():
                delta = (b.float() @ a.float()) * module.scaling["default"]
                base.weight.add_(delta.to(base.weight.dtype))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, base)
        merged += 1
    return merged
