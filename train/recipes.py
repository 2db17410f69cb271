"""Training recipes: one class per kind of trainable set, bound to method names by the registry
(``neurorit/methods.py``: a stage's ``StageRule.recipe`` names a class here, ``StageRule.options`` are its
arguments). A recipe owns what trains (``choose``: everything else is frozen and stays out of the optimizer), its
learning rate and config block, whether it needs the neuron map, and what happens to the model before export.
The training loop (``train/loop.py``) knows no method and no recipe by name.

- ``neurons``: neuron deltas (gate row, up row, down column) of some groups in every layer, optionally
  randomised, optionally with the whole FFN of the mined target layers (with no groups: the target layers alone),
  or of as many layers drawn at random (``random_layers``);
- ``everything``: every parameter;
- ``lora``: peft LoRA adapters, merged before export; its block is ``stage<N>.lora``;
- ``release_masks``: what the released code trains (its gradient masks, misaligned by a reshape; the variant that
  reproduces the release, docs/DESIGN.md §7);
- ``nothing``: nothing trains (the stage re-exports its input), optionally with the irrelevant-only neurons
  (or as many random ones per layer) folded to zero at export (hard deactivation).

A new kind of trainable set is one class here with ``@recipe("name")`` plus a registry entry naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from model_patches import FFNPatcher, get_ffn_layout, patch_model, release_masks
from neurorit import methods
from neurorit.config import StageConfig
from neurorit.errors import UserError
from neurorit.methods import StageRule
from train import lora
from train.trainable import Trainable, gate_weights, neuron_spec, numel, planned_neuron_count, randomized

RECIPES: dict[str, type["Recipe"]] = {}


def recipe(name: str):
    """Class decorator: register a recipe under the name registry entries use."""
    def register(cls):
        cls.name = name
        RECIPES[name] = cls
        return cls
    return register


@dataclass
class StageContext:
    """What a recipe sees of its stage: the loaded model, its FFN patcher (None for recipes that do not patch),
    the neuron map (None when the recipe needs none), the seed and the stage's config."""

    model: torch.nn.Module
    patcher: Optional[FFNPatcher]
    nmap: object
    seed: int
    st: StageConfig


class Recipe:
    """Base: freezes everything, then ``choose`` marks what trains. Subclasses override what differs."""

    name = ""
    needs_map = False
    trains = True  # False: the stage loads the model whole, builds no engine and only exports
    patches_ffn = False  # True: the loop patches the FFNs before ``choose`` (neuron deltas, deactivation)
    can_freeze_gate = False  # honours stage<N>.train_gate false
    max_zero_stage = 3  # the loop runs the stage under min(stage<N>.zero_stage, this)
    lr_key = "lr"  # the key of stage<N> holding the learning rate (the demo's dev grid sets it)

    def lr(self, st: StageConfig) -> float:
        value = st
        for part in self.lr_key.split("."):
            value = getattr(value, part)
        return value

    def setup(self, ctx: StageContext) -> Trainable:
        """Freeze every parameter, then let the recipe choose; the returned ``params`` are exactly what the
        optimizer gets."""
        if not ctx.st.train_gate and not self.can_freeze_gate:
            raise UserError(f"train_gate false applies to neuron and target-layer rules; this stage trains "
                            f"{self.name!r}")
        for p in ctx.model.parameters():
            p.requires_grad_(False)
        out = self.choose(ctx)
        for p in out.params:
            p.requires_grad_(True)
        return out

    def choose(self, ctx: StageContext) -> Trainable:
        raise NotImplementedError

    def before_export(self, ctx: StageContext) -> dict:
        """Change the trained model into what the export holds; returns extra summary fields."""
        return {}

    def planned_count(self, model: torch.nn.Module, nmap, seed: int) -> int:
        """What this recipe trains on ``model``, counted without building anything (for LoRA's rank match)."""
        raise UserError(f"recipe {self.name!r} has no planned parameter count")


@recipe("neurons")
@dataclass
class Neurons(Recipe):
    """Neuron deltas of ``groups`` in every layer (``random``: as many random neurons per layer), plus the whole
    FFN of the target layers with ``target_layers`` (see ``train/trainable.py`` for the counting rules)."""

    groups: tuple = ()
    random: bool = False
    target_layers: bool = False
    random_layers: bool = False  # with target_layers: as many layers drawn at random instead (recorded)
    needs_map = True
    patches_ffn = True
    can_freeze_gate = True

    def __post_init__(self):
        if self.random_layers and not self.target_layers:
            raise UserError("recipe neurons: random_layers replaces the target layers; set target_layers too")

    def choose(self, ctx: StageContext) -> Trainable:
        patcher = ctx.patcher
        spec, full_layers = neuron_spec(self, ctx.nmap, patcher.intermediate_size, ctx.seed)
        deltas = patcher.add_neuron_deltas(spec) if spec else []
        modules = patcher.layout.ffn_modules(ctx.model)
        ffn = [p for layer in full_layers for p in modules[layer].parameters()]
        if not ctx.st.train_gate:
            frozen = {id(d_gate) for _, d_gate, _, _ in patcher.neuron_deltas().values()} | \
                gate_weights(patcher, full_layers)
            for p in deltas:  # new parameters require grad: freeze the gate deltas (they stay zero)
                p.requires_grad_(id(p) not in frozen)
            deltas = [p for p in deltas if id(p) not in frozen]
            ffn = [p for p in ffn if id(p) not in frozen]
        return Trainable(params=deltas + ffn, neurons=spec, full_layers=full_layers,
                         delta_count=sum(numel(p) for p in deltas), ffn_count=sum(numel(p) for p in ffn),
                         details={"random_layers": full_layers} if self.random_layers else {})

    def planned_count(self, model: torch.nn.Module, nmap, seed: int) -> int:
        return planned_neuron_count(self, nmap, model, seed)


@recipe("everything")
@dataclass
class Everything(Recipe):
    """Every parameter (full fine-tuning)."""

    def choose(self, ctx: StageContext) -> Trainable:
        params = list(ctx.model.parameters())
        return Trainable(params=params, other_count=sum(numel(p) for p in params))


@recipe("lora")
@dataclass
class Lora(Recipe):
    """peft LoRA on every linear of every decoder layer (``train/lora.py``), block ``stage<N>.lora``; with rank 0
    the rank whose count is nearest the count of ``match_params_of`` (all its stages) on this model and map."""

    match_params_of: str = ""
    lr_key = "lora.lr"

    @property
    def needs_map(self) -> bool:
        return bool(self.match_params_of)

    def choose(self, ctx: StageContext) -> Trainable:
        rank = ctx.st.lora.rank
        if not rank:
            rules = methods.get(self.match_params_of).stages.values()
            count = sum(build(r).planned_count(ctx.model, ctx.nmap, ctx.seed) for r in rules)
            rank = lora.rank_to_match(ctx.model, count)
        params = lora.add_lora(ctx.model, rank, ctx.st.lora.alpha, ctx.seed)
        return Trainable(params=params, other_count=sum(numel(p) for p in params), details={"lora_rank": rank},
                         description=f"LoRA adapters of rank {rank}")

    def before_export(self, ctx: StageContext) -> dict:
        lora.merge_lora(ctx.model)
        return {}


@recipe("release_masks")
@dataclass
class ReleaseMasks(Recipe):
    """What the released trainers actually train (``model_patches/release_masks.py``, docs/DESIGN.md §7): the FFN
    weights of every layer under the release's gradient masks, built with a reshape where a transpose was meant,
    for the neurons of ``groups``; ``stage`` picks the release's stage rule (``stage2``: gates frozen, up / down
    of the last three layers in full). Whole weights enter the optimizer, with weight decay 0 their masked
    positions never move. ``transposed``: the same with the masks transposed as meant (the neurons' own rows and
    columns), the control that isolates the reshape. Gated layouts only; at most ZeRO-2 (the masks are
    full-shape)."""

    groups: tuple = ()
    stage: str = "stage2"
    transposed: bool = False
    needs_map = True
    max_zero_stage = 2  # full-shape gradient masks: ZeRO-3 would hand the hooks partitioned gradients

    def choose(self, ctx: StageContext) -> Trainable:
        layout, st = get_ffn_layout(ctx.model), ctx.st
        if layout.layout != "gated" or st.weight_decay:
            raise UserError(f"recipe release_masks needs a gated FFN layout (this model: {layout.layout}) and "
                            f"weight_decay 0 (got {st.weight_decay}: decay would move the masked weights)")
        neurons: dict[int, list] = {}
        for group in self.groups:
            for layer, ids in ctx.nmap.per_layer(group).items():
                neurons.setdefault(int(layer), []).extend(int(n) for n in ids)
        layers = layout.layers(ctx.model)
        masks = release_masks.release_model_masks(neurons, len(layers), layout.hidden_size,
                                                  layout.intermediate_size, self.stage, transposed=self.transposed)
        weights = {i: layout.weights(layout.ffn_module(layer)) for i, layer in enumerate(layers)}
        release_masks.attach_grad_masks(weights, masks)
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        count = release_masks.trained_count(masks)
        return Trainable(params=params, other_count=count,
                         description=f"{count:,} weights under the release's gradient masks ({self.stage} rule"
                                     f"{', transposed' if self.transposed else ''})")


@recipe("nothing")
@dataclass
class Nothing(Recipe):
    """Nothing trains; with ``fold_irrelevant_only`` the irrelevant-only neurons are switched off and folded into
    the exported weights (hard deactivation); with ``random`` as many random neurons per layer instead (seeded)."""

    fold_irrelevant_only: bool = False
    random: bool = False
    trains = False

    @property
    def needs_map(self) -> bool:
        return self.fold_irrelevant_only

    @property
    def patches_ffn(self) -> bool:  # the deactivation lives in the patched FFNs until export folds it
        return self.fold_irrelevant_only

    def choose(self, ctx: StageContext) -> Trainable:
        return Trainable()

    def before_export(self, ctx: StageContext) -> dict:
        if not self.fold_irrelevant_only:
            return {}
        spec = ctx.nmap.per_layer("irrelevant_only")
        if self.random:
            spec = randomized({int(k): torch.as_tensor(v) for k, v in spec.items()}, ctx.patcher.intermediate_size,
                              ctx.seed)
        ctx.patcher.set_deactivated(spec)
        return {"deactivated_neurons": sum(len(v) for v in spec.values())}


def setup_stage(model: torch.nn.Module, recipe: Recipe, nmap, seed: int,
                st: StageConfig) -> tuple[StageContext, Trainable]:
    """Patch the FFNs (when the recipe patches) and let the recipe choose what trains: what the training loop does
    to a loaded model, also used by the benchmarks."""
    ctx = StageContext(model, patch_model(model) if recipe.patches_ffn else None, nmap, seed, st)
    return ctx, recipe.setup(ctx)


def build(rule: StageRule) -> Recipe:
    """The recipe a registry rule names, with the rule's options."""
    if rule.recipe not in RECIPES:
        raise UserError(f"unknown training recipe {rule.recipe!r}; use one of {', '.join(RECIPES)}")
    return RECIPES[rule.recipe](**rule.options)
