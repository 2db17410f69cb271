"""The weight positions the released Neuro-RIT code actually trains for a neuron (docs/DESIGN.md §7, issue 19).

Read in Jaemin0730/NeuRIT (commit 41ac99d / 154e351): the mask builders (``NeFT/make_pt_all_edit_*.py``) make,
per layer, an ``"<l>_in"`` mask of shape ``(hidden, ffn)`` with *column* n set for each selected neuron n, and an
``"<l>_out"`` mask of shape ``(ffn, hidden)`` with *row* n set. The trainers
(``Phase2/train_neuron-*/trainer_add_grad_mask_load_neuron_dict_Llama3_8B_Instruct.py``) multiply gradients by
``mask.reshape(ffn, hidden)`` (gate / up, weights ``(ffn, hidden)``) and ``mask.reshape(hidden, ffn)`` (down,
weight ``(hidden, ffn)``): a reshape where a transpose was meant. So, in the weights' own row-major layout:

- gate / up: flat positions ``h * ffn + n`` for ``h`` in ``0..hidden-1``, i.e. one weight in each of ``hidden``
  different rows (row ``(h * ffn + n) // hidden``), almost never row n (what neuron n owns);
- down: the contiguous flat positions ``n * hidden .. n * hidden + hidden - 1`` (a strip of one or two rows of the
  down weight), not column n.

What trains, per released stage: stage 1 (``train_neuron-Denoise``) masks gate *and* up with the ``_in`` mask and
down with the ``_out`` mask in every layer; stage 2 (``train_neuron-NoiseFilter``) zeroes every gate gradient
(gates frozen), masks up / down in layers ``0..L-4`` and leaves up / down of the last three layers unmasked (its
loop tests ``range(29)`` on a 32-layer model). Every non-FFN gradient is zeroed in both.

``release_positions`` computes those flat positions for one neuron; ``release_layer_masks`` builds the boolean
masks of one layer exactly as the release does (build, then reshape) so the two can be checked against each
other; ``release_model_masks`` gives every layer's masks for a stage; ``attach_grad_masks`` multiplies the
gradients of a plain (non-ZeRO-3) model's FFN weights by them.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

ROLES = ("gate", "up", "down")
STAGES = ("stage1", "stage2")
RELEASE_UNMASKED_LAST = 3  # stage 2: up / down of the last three layers train in full


def release_positions(neuron: int, hidden: int, ffn: int) -> dict[str, torch.Tensor]:
    """Flat (row-major) positions trained for ``neuron`` in the gate / up weights ``(ffn, hidden)`` and the down
    weight ``(hidden, ffn)`` under the release's reshape (gate positions = up positions)."""
    if not 0 <= neuron < ffn:
        raise ValueError(f"neuron {neuron} outside 0..{ffn - 1}")
    rows_in = torch.arange(hidden, dtype=torch.long) * ffn + neuron  # column `neuron` of the (hidden, ffn) mask
    out = torch.arange(hidden, dtype=torch.long) + neuron * hidden  # row `neuron` of the (ffn, hidden) mask
    return {"gate": rows_in, "up": rows_in.clone(), "down": out}


def intended_positions(neuron: int, hidden: int, ffn: int) -> dict[str, torch.Tensor]:
    """What neuron ``neuron`` owns (what a transpose would have given): row n of gate / up, column n of down."""
    row = torch.arange(hidden, dtype=torch.long) + neuron * hidden
    col = torch.arange(hidden, dtype=torch.long) * ffn + neuron
    return {"gate": row, "up": row.clone(), "down": col}


def _release_built(neurons: Iterable[int], hidden: int, ffn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's ``_in`` ``(hidden, ffn)`` and ``_out`` ``(ffn, hidden)`` masks, as its builders make them."""
    mask_in = torch.zeros(hidden, ffn, dtype=torch.bool)
    mask_out = torch.zeros(ffn, hidden, dtype=torch.bool)
    for n in neurons:
        mask_in[:, n] = True
        mask_out[n, :] = True
    return mask_in, mask_out


def release_layer_masks(neurons: Iterable[int], hidden: int, ffn: int, train_gate: bool = True,
                        full: bool = False, transposed: bool = False) -> dict[str, torch.Tensor]:
    """Boolean masks, in the weights' shapes (gate / up ``(ffn, hidden)``, down ``(hidden, ffn)``), of what the
    release trains in one layer: its masks reshaped (not transposed); ``full`` = up / down unmasked (the last
    layers of stage 2); ``train_gate`` False = gate frozen (stage 2); ``transposed`` = the masks transposed as
    meant (each neuron's own rows / columns), everything else as released: the control of the reshape alone."""
    if full:
        up = torch.ones(ffn, hidden, dtype=torch.bool)
        down = torch.ones(hidden, ffn, dtype=torch.bool)
    else:
        mask_in, mask_out = _release_built(neurons, hidden, ffn)
        if transposed:
            up, down = mask_in.t().contiguous(), mask_out.t().contiguous()
        else:
            up, down = mask_in.reshape(ffn, hidden), mask_out.reshape(hidden, ffn)
    gate = up.clone() if train_gate else torch.zeros(ffn, hidden, dtype=torch.bool)
    return {"gate": gate, "up": up, "down": down}


def release_model_masks(neurons_by_layer: dict[int, Iterable[int]], num_layers: int, hidden: int, ffn: int,
                        stage: str, *, full_layers: Optional[Iterable[int]] = None,
                        transposed: bool = False) -> dict[int, dict[str, torch.Tensor]]:
    """Every layer's masks for a released stage. ``stage1``: gate and up share the ``_in`` mask, every layer
    masked. ``stage2``: gates frozen, up / down unmasked in the last ``RELEASE_UNMASKED_LAST`` layers (as
    released), or in exactly ``full_layers`` when given (e.g. the mined target layers; ``()``: none).
    ``transposed``: see ``release_layer_masks``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    if stage == "stage1":
        full: set = set()
    else:
        full = set(range(num_layers - RELEASE_UNMASKED_LAST, num_layers)) if full_layers is None else set(full_layers)
    return {layer: release_layer_masks(neurons_by_layer.get(layer, ()), hidden, ffn,
                                       train_gate=stage == "stage1", full=layer in full, transposed=transposed)
            for layer in range(num_layers)}


def attach_grad_masks(weights_by_layer: dict[int, dict[str, torch.Tensor]],
                      masks: dict[int, dict[str, torch.Tensor]]) -> list:
    """Multiply each FFN weight's gradient by its mask (a tensor hook); a weight whose mask is all False gets
    ``requires_grad_(False)``. ``weights_by_layer``: ``{layer: {role: weight}}`` as ``FFNLayout.weights`` gives
    for a gated layout. Returns the hook handles (``.remove()`` to undo). Plain models only: under ZeRO-3 a
    parameter holds a shard and its gradient is partitioned, so these full-shape masks do not apply."""
    handles = []
    for layer, roles in weights_by_layer.items():
        for role, weight in roles.items():
            mask = masks[layer][role]
            if tuple(mask.shape) != tuple(weight.shape):
                raise ValueError(f"layer {layer} {role}: mask {tuple(mask.shape)} vs weight {tuple(weight.shape)}")
            if not bool(mask.any()):
                weight.requires_grad_(False)
                continue
            weight.requires_grad_(True)
            keep = mask.to(device=weight.device, dtype=weight.dtype)
            handles.append(weight.register_hook(lambda g, keep=keep: g * keep))
    return handles


def trained_count(masks: dict[int, dict[str, torch.Tensor]]) -> int:
    """How many weights the masks let train (for reports: compare with 3 x hidden x neurons)."""
    return sum(int(m.sum()) for roles in masks.values() for m in roles.values())
