"""Install / remove the patched FFN forward on a model instance and drive it: probe, scale, deactivate, deltas.

``patch_model(model)`` replaces ``forward`` on each FFN module *instance* (never the class), so other models in
the process are untouched; ``unpatch_model(model)`` puts the original forwards back. The returned ``FFNPatcher``
is the only handle the rest of the project uses (see ``model_patches/__init__.py`` for the API summary).
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional, Union

import torch

from model_patches.layout_registry import get_ffn_layout, unwrap
from model_patches.layouts.base import DELTA_INDEX, DELTA_NAMES, FFNLayout, LayerControl
from neurorit.errors import UserError

_ATTR = "_neurorit_patcher"
Positions = Union[str, Iterable[int], torch.Tensor]


class FFNPatcher:
    """Neuron-level control of every FFN layer of one model (all features off until switched on)."""

    def __init__(self, model: torch.nn.Module, layout: FFNLayout):
        self.model = model
        self.layout = layout
        self.num_layers = len(layout.layers(model))
        self.intermediate_size = layout.intermediate_size
        self.scaled: dict[int, torch.Tensor] = {}
        self.scale_position = -1  # where set_scale scales (python index into the sequence)
        self.controls: list[LayerControl] = []
        self._restore: list[tuple[torch.nn.Module, Optional[object]]] = []
        self._probe_store: Optional[dict] = None
        self._probe_layers: Optional[set] = None
        self._probe_spec: Positions = "last"

    # ---------------------------------------------------------------------------------------- install
    def _install(self) -> None:
        for i, layer in enumerate(self.layout.layers(self.model)):
            ctl = LayerControl(self, i, self.layout.ffn_module(layer))
            self.controls.append(ctl)
            for module, patched in self.layout.patches(ctl, layer):
                self._replace(module, patched)

    def _replace(self, module: torch.nn.Module, patched) -> None:
        own = module.__dict__.get("forward")  # an instance-level forward someone else installed, if any
        self._restore.append((module, own))
        original = module.forward
        module.forward = lambda *args, **kwargs: patched(original, *args, **kwargs)

    def _uninstall(self) -> None:
        for module, own in reversed(self._restore):
            if own is None:
                del module.__dict__["forward"]
            else:
                module.forward = own
        self._restore = []

    # ------------------------------------------------------------------------------------------ probe
    @contextlib.contextmanager
    def probe(self, layers: Optional[Iterable[int]] = None, positions: Positions = "last"):
        """Yield a dict filled by each forward: ``store[layer]`` = activations (input of down), detached.

        ``positions``: ``"last"`` -> ``[batch, d_ff]``; ``"all"`` -> ``[batch, seq, d_ff]``; a list of positions
        (negative counts from the end) -> ``[batch, len(positions), d_ff]``. A later forward overwrites.
        """
        if isinstance(positions, str) and positions not in ("last", "all"):
            raise UserError(f"probe positions must be 'last', 'all' or a list of ints, not {positions!r}")
        self._probe_store = {}
        self._probe_layers = None if layers is None else {self._check_layer(l) for l in layers}
        self._probe_spec = positions
        try:
            yield self._probe_store
        finally:
            self._probe_store = None
            self._probe_layers = None

    # The layouts' forwards read these three (through their LayerControl).
    def probe_wants(self, layer: int) -> bool:
        """Whether an open ``probe`` records ``layer``."""
        return self._probe_store is not None and (self._probe_layers is None or layer in self._probe_layers)

    def probe_positions(self, seq_len: int, device) -> torch.Tensor:
        """The positions the open ``probe`` records, for a sequence of ``seq_len`` tokens."""
        spec = self._probe_spec
        if isinstance(spec, str):
            return torch.arange(seq_len - 1 if spec == "last" else 0, seq_len, device=device)
        return torch.as_tensor(list(spec) if not torch.is_tensor(spec) else spec, device=device) % seq_len

    def record_probe(self, layer: int, acts: torch.Tensor) -> None:
        """``acts``: ``[batch, positions, d_ff]`` already restricted to the probed positions."""
        self._probe_store[layer] = acts[:, 0] if self._probe_spec == "last" else acts

    # ------------------------------------------------------------------------------------------ scale
    def set_scale(self, spec: dict, position: int = -1) -> None:
        """``{layer: (rows[r], alphas[r], baseline[r, d_ff])}``: at ``position`` (default the last) of those batch
        rows the activation becomes ``baseline + alpha * (a - baseline)``; ``self.scaled[layer]`` then holds it."""
        self.clear_scale()
        self.scale_position = position
        for layer, (rows, alphas, baseline) in spec.items():
            ctl = self.controls[self._check_layer(layer)]
            rows = torch.as_tensor(rows, dtype=torch.long)
            if baseline.shape != (rows.numel(), self.intermediate_size) or alphas.shape != (rows.numel(),):
                raise UserError(f"set_scale layer {layer}: want alphas [{rows.numel()}] and baseline "
                                f"[{rows.numel()}, {self.intermediate_size}], got {tuple(alphas.shape)} and "
                                f"{tuple(baseline.shape)}")
            ctl.scale = (rows.to(baseline.device), alphas, baseline)

    def clear_scale(self) -> None:
        for ctl in self.controls:
            ctl.scale = None
        self.scaled = {}
        self.scale_position = -1

    # ------------------------------------------------------------------------------------- deactivate
    def set_deactivated(self, spec: dict) -> None:
        """``{layer: neurons}``: those neurons read as zero at every position (replaces earlier settings)."""
        self.clear_deactivated()
        for layer, neurons in spec.items():
            ctl = self.controls[self._check_layer(layer)]
            ctl.dead = self._neuron_ids(neurons, layer, _device_of(ctl.module))

    def clear_deactivated(self) -> None:
        for ctl in self.controls:
            ctl.dead = None
            ctl.forget("dead")

    def deactivated(self) -> dict[int, torch.Tensor]:
        return {c.layer: c.dead for c in self.controls if c.dead is not None}

    # ---------------------------------------------------------------------------------- neuron deltas
    def add_neuron_deltas(self, spec: dict) -> list[torch.nn.Parameter]:
        """Trainable zero deltas for ``{layer: neurons}`` — gate row, up row ``[n, hidden]`` and down column
        ``[hidden, n]`` — registered on that layer's FFN module. Call before ``deepspeed.initialize``. The layout
        may prepare the model first (``FFNLayout.before_deltas``; MoE makes the input embeddings require grad)."""
        self.layout.before_deltas(self.model)
        new = []
        for layer, neurons in spec.items():
            ctl = self.controls[self._check_layer(layer)]
            mod = ctl.module
            if ctl.has_deltas:
                raise UserError(f"layer {layer} already has neuron deltas")
            weight = next(mod.parameters())
            ids = self._neuron_ids(neurons, layer, weight.device)
            shapes = self.layout.delta_shapes(ids.numel())
            mod.register_buffer(DELTA_INDEX, ids, persistent=False)
            for name, shape in zip(DELTA_NAMES, shapes):
                param = torch.nn.Parameter(torch.zeros(shape, dtype=weight.dtype, device=weight.device))
                mod.register_parameter(name, param)
                new.append(param)
        return new

    def neuron_deltas(self) -> dict[int, tuple[torch.Tensor, ...]]:
        """``{layer: (neuron ids, delta_gate, delta_up, delta_down)}`` for layers with deltas."""
        return {c.layer: (getattr(c.module, DELTA_INDEX),) + tuple(getattr(c.module, n) for n in DELTA_NAMES)
                for c in self.controls if c.has_deltas}

    def weight_roles(self) -> dict[int, tuple[int, str]]:
        """``id(weight) -> (layer, role)`` for every FFN weight (roles as in the layout's ``ROLES``)."""
        return {id(w): (ctl.layer, role) for ctl in self.controls
                for role, w in self.layout.weights(ctl.module).items()}

    def remove_neuron_deltas(self) -> None:
        for ctl in self.controls:
            if ctl.has_deltas:
                for name in DELTA_NAMES:
                    delattr(ctl.module, name)
                delattr(ctl.module, DELTA_INDEX)
                ctl.forget("deltas")

    # ---------------------------------------------------------------------------------------- helpers
    def _check_layer(self, layer: int) -> int:
        if not 0 <= int(layer) < self.num_layers:
            raise UserError(f"layer {layer} out of range: the model has {self.num_layers} layers")
        return int(layer)

    def _neuron_ids(self, neurons, layer: int, device) -> torch.Tensor:
        ids = torch.as_tensor(neurons, dtype=torch.long).flatten().cpu()
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.intermediate_size):
            raise UserError(f"layer {layer}: neuron ids must lie in [0, {self.intermediate_size})")
        if ids.unique().numel() != ids.numel():
            raise UserError(f"layer {layer}: neuron ids must be distinct")
        return ids.to(device)


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def patch_model(model: torch.nn.Module) -> FFNPatcher:
    """Patch every FFN module of ``model`` (idempotent: a patched model returns its existing patcher)."""
    model = unwrap(model)
    existing = getattr(model, _ATTR, None)
    if existing is not None:
        return existing
    patcher = FFNPatcher(model, get_ffn_layout(model))
    patcher._install()
    object.__setattr__(model, _ATTR, patcher)
    return patcher


def installed_patcher(model: torch.nn.Module) -> Optional[FFNPatcher]:
    """The patcher installed on ``model``, or None if it is not patched."""
    return getattr(unwrap(model), _ATTR, None)


def get_patcher(model: torch.nn.Module) -> FFNPatcher:
    """The patcher installed on ``model``; a UserError if ``patch_model`` was never called."""
    model = unwrap(model)
    patcher = installed_patcher(model)
    if patcher is None:
        raise UserError(f"{type(model).__name__} is not patched: call model_patches.patch_model(model) first")
    return patcher


def unpatch_model(model: torch.nn.Module) -> None:
    """Restore the original forwards. Refused while neuron deltas exist (merge or remove them first)."""
    model = unwrap(model)
    patcher = getattr(model, _ATTR, None)
    if patcher is not None:
        if patcher.neuron_deltas():
            raise UserError("unpatch_model: the model still has neuron deltas; call merge_into_weights(model) "
                            "or get_patcher(model).remove_neuron_deltas() first")
        patcher._uninstall()
        object.__delattr__(model, _ATTR)
