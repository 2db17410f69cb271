"""The method registry: Neuro-RIT and every baseline, one entry each (docs/DESIGN.md §3).

An entry says, per training stage it runs in, which training recipe runs (``StageRule.recipe``: a name of
``train/recipes.py``, which owns what trains, its learning rate, whether it needs the neuron map, and what happens
before export), with which options, on which data task (``train/data.py``: ``end_on_noise``, ``evidence``,
``answer``). Where stage 2 starts follows from the entry (``Method.chains``). Config validation
(``stage<N>.method``), training, the demo, the report and the SLURM scripts read this table; nothing else names a
method. A baseline is one entry here plus its test; a new kind of trainable set is one recipe class plus an entry.

Evaluation never patches anything: every method ends in a plain Hugging Face checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from neurorit.errors import UserError
from neurorit.neuron_map import GROUPS as ALL_GROUPS

STAGES = ("stage1", "stage2")
TASKS = ("end_on_noise", "evidence", "answer")


@dataclass(frozen=True)
class StageRule:
    """What one method does in one stage: a training recipe with its options, on a data task."""

    recipe: str  # a name of train/recipes.py RECIPES
    task: Literal["end_on_noise", "evidence", "answer"] = "end_on_noise"
    options: dict = field(default_factory=dict)  # the recipe's arguments


@dataclass(frozen=True)
class Method:
    name: str  # the config value, the output folder in the demo and the row of the report
    help: str
    stages: dict = field(default_factory=dict)  # stage -> StageRule, in pipeline order; {} = evaluated as it is
    # reference: not in the demo or the report; control: a control of the map (issue 27), run by name
    # (``stage<N>.method``), reported when run, not run by the demo
    role: Literal["base", "baseline", "neurorit", "control", "reference"] = "baseline"
    run_of: str = ""  # evaluated from another method's run (its stage outputs), e.g. neurorit_stage1
    control_of: str = ""  # the mined arm this random control re-draws (``selection.share_control_lr`` pairs them)

    @property
    def reported(self) -> bool:
        """Run by the demo and reported (controls are reported when run, in ``REPORT_ORDER``, but not run by it)."""
        return self.role not in ("reference", "control")

    def rule(self, stage: str) -> StageRule:
        if stage not in self.stages:
            usable = ", ".join(m.name for m in METHODS.values() if stage in m.stages and not m.run_of)
            raise UserError(f"{stage}.method {self.name!r} does not run in {stage}; use one of {usable}")
        return self.stages[stage]

    def chains(self) -> bool:
        """Stage 2 starts from this method's own stage-1 export (else from the base model)."""
        return "stage1" in self.stages and "stage2" in self.stages


_NEURORIT_STAGE1 = StageRule("neurons", "end_on_noise", {"groups": ("irrelevant_only",)})
_NEURORIT_STAGE2 = StageRule("neurons", "evidence", {"groups": ALL_GROUPS, "target_layers": True})

_ENTRIES = (
    Method("base", "the model as it is, untuned", role="base"),
    Method("robust_sft", "RetRobust-style SFT of every parameter: top-K or noise-only documents -> the answer",
           {"stage2": StageRule("everything", "answer")}),
    Method("layer_tuning", "the whole FFN of the mined target layers on stage 2's data",
           {"stage2": StageRule("neurons", "evidence", {"target_layers": True})}),
    Method("lora", "LoRA (peft) on every linear of every decoder layer, on stage 2's data, its rank set so that "
           "its trainable parameters match Neuro-RIT's (both stages) within 10%",
           {"stage2": StageRule("lora", "evidence", {"match_params_of": "neurorit"})}),
    Method("random_neurons", "Neuro-RIT's two stages with each layer's neurons replaced by random ones",
           {"stage1": StageRule("neurons", "end_on_noise", {"groups": ("irrelevant_only",), "random": True}),
            "stage2": StageRule("neurons", "evidence", {"groups": ALL_GROUPS, "random": True,
                                                        "target_layers": True})}, control_of="neurorit"),
    Method("neurorit_stage1", "Neuro-RIT after stage 1 only (noise suppression)", {"stage1": _NEURORIT_STAGE1},
           role="neurorit", run_of="neurorit"),
    Method("neurorit", "Neuro-RIT: stage 1 (irrelevant-only neurons -> EOS on noise), then stage 2 (all groups "
           "+ target-layer FFNs -> evidence)", {"stage1": _NEURORIT_STAGE1, "stage2": _NEURORIT_STAGE2},
           role="neurorit"),
    Method("neurorit_hard_deactivation", "the base model with its irrelevant-only neurons switched off (folded "
           "into the weights at export)", {"stage1": StageRule("nothing", options={"fold_irrelevant_only": True})},
           role="neurorit"),
    Method("neurorit_release_masks", "Neuro-RIT as the released code trains it: its stage 1 and stage 2 gradient "
           "masks (built with a reshape where a transpose was meant: scattered weights, not the neurons' rows), "
           "gates frozen in stage 2, up / down of the last three layers in full",
           {"stage1": StageRule("release_masks", "end_on_noise", {"groups": ("irrelevant_only",), "stage": "stage1"}),
            "stage2": StageRule("release_masks", "evidence", {"groups": ALL_GROUPS, "stage": "stage2"})},
           role="neurorit"),
    Method("release_masks_transposed", "neurorit_release_masks with its masks transposed as meant (each neuron's "
           "own rows and columns): the same layers, frozen gates, learning rate and clipping, so the reshape is "
           "the only difference",
           {"stage1": StageRule("release_masks", "end_on_noise", {"groups": ("irrelevant_only",), "stage": "stage1",
                                                                  "transposed": True}),
            "stage2": StageRule("release_masks", "evidence", {"groups": ALL_GROUPS, "stage": "stage2",
                                                             "transposed": True})},
           role="control", control_of="neurorit_release_masks"),
    Method("neurons_only", "stage 2 on the three neuron groups in every layer only (no target-layer FFN), "
           "evidence data: the mined neurons without the layers",
           {"stage2": StageRule("neurons", "evidence", {"groups": ALL_GROUPS})}, role="control"),
    Method("random_neurons_only", "neurons_only with each layer's neurons replaced by as many random ones "
           "(seeded by runtime.seed)",
           {"stage2": StageRule("neurons", "evidence", {"groups": ALL_GROUPS, "random": True})}, role="control",
           control_of="neurons_only"),
    Method("random_layers", "layer_tuning on as many layers drawn at random (seeded by runtime.seed; the draw is "
           "recorded in train_summary.json) as the map has target layers",
           {"stage2": StageRule("neurons", "evidence", {"target_layers": True, "random_layers": True})},
           role="control", control_of="layer_tuning"),
    Method("random_hard_deactivation", "hard deactivation of as many random neurons per layer as the map has "
           "irrelevant-only ones (seeded by runtime.seed)",
           {"stage1": StageRule("nothing", options={"fold_irrelevant_only": True, "random": True})},
           role="control", control_of="neurorit_hard_deactivation"),
    Method("full", "full fine-tuning of every parameter on each stage's own data (a reference, not reported)",
           {"stage1": StageRule("everything", "end_on_noise"), "stage2": StageRule("everything", "evidence")},
           role="reference"),
    Method("none", "train nothing: the stage re-exports its input (for tests and plumbing)",
           {"stage1": StageRule("nothing"), "stage2": StageRule("nothing", "evidence")}, role="reference"),
)
METHODS: dict[str, Method] = {m.name: m for m in _ENTRIES}
REPORT_ORDER = tuple(m.name for m in _ENTRIES if m.role != "reference")


def get(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
    return METHODS[name]


def stage_methods(stage: str) -> tuple[str, ...]:
    """The names ``stage<N>.method`` accepts."""
    return tuple(m.name for m in METHODS.values() if stage in m.stages and not m.run_of)
