"""The method registry: Neuro-RIT and every baseline, one entry each (docs/DESIGN.md §3).

An entry says, per training stage it runs in, what trains (neuron deltas of some groups, the whole FFN of the
target layers, every parameter, or nothing), on which data recipe, and how the stage exports (a plain merge, or
the irrelevant-only neurons folded to zero: hard deactivation). From that follow whether it needs a neuron map
and where stage 2 starts. Config validation (``stage<N>.method``), training (``train/``), the demo, the report
and the SLURM scripts read this table; nothing else names a method. Adding a baseline that trains what an
existing rule can express is one entry here plus its test.

Evaluation never patches anything: every method ends in a plain Hugging Face checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from neurorit.errors import UserError
from neurorit.neuron_map import GROUPS as ALL_GROUPS

STAGES = ("stage1", "stage2")



@dataclass(frozen=True)
class StageRule:
    """What one method does in one stage."""

    trains: Literal["neurons", "target_layers", "all", "lora", "nothing"]
    groups: tuple[str, ...] = ()  # neuron groups that get deltas (trains="neurons")
    random: bool = False  # replace each layer's neurons by as many random neurons of that layer (seeded)
    target_layers: bool = False  # with trains="neurons": the whole FFN of the target layers trains too
    data: Literal["stage1", "stage2", "robust_sft"] = "stage1"  # the data recipe (train/data.py)
    export: Literal["merge", "fold_irrelevant_only"] = "merge"
    match_params_of: str = ""  # trains="lora": the rank (stage<N>.lora_rank 0) matches this method's count

    @property
    def needs_map(self) -> bool:
        return self.trains in ("neurons", "target_layers") or self.export == "fold_irrelevant_only" or \
            bool(self.match_params_of)


@dataclass(frozen=True)
class Method:
    name: str  # the config value, the output folder in the demo and the row of the report
    help: str
    stages: dict = field(default_factory=dict)  # stage -> StageRule, in pipeline order; {} = evaluated as it is
    role: Literal["base", "baseline", "neurorit", "reference"] = "baseline"  # reference: not in the demo/report
    run_of: str = ""  # evaluated from another method's run (its stage outputs), e.g. neurorit_stage1

    @property
    def needs_map(self) -> bool:
        return any(rule.needs_map for rule in self.stages.values())

    @property
    def reported(self) -> bool:
        return self.role != "reference"

    def rule(self, stage: str) -> StageRule:
        if stage not in self.stages:
            usable = ", ".join(m.name for m in METHODS.values() if stage in m.stages and not m.run_of)
            raise UserError(f"{stage}.method {self.name!r} does not run in {stage}; use one of {usable}")
        return self.stages[stage]

    def chains(self) -> bool:
        """Stage 2 starts from this method's own stage-1 export (else from the base model)."""
        return "stage1" in self.stages and "stage2" in self.stages


_NEURORIT_STAGE1 = StageRule("neurons", groups=("irrelevant_only",), data="stage1")
_NEURORIT_STAGE2 = StageRule("neurons", groups=ALL_GROUPS, target_layers=True, data="stage2")

_ENTRIES = (
    Method("base", "the model as it is, untuned", role="base"),
    Method("robust_sft", "RetRobust-style SFT of every parameter: top-K or noise-only documents -> the answer",
           {"stage2": StageRule("all", data="robust_sft")}),
    Method("layer_tuning", "the whole FFN of the mined target layers on stage 2's data",
           {"stage2": StageRule("target_layers", data="stage2")}),
    Method("lora", "LoRA (peft) on every linear of every decoder layer, on stage 2's data, its rank set so that "
           "its trainable parameters match Neuro-RIT's (both stages) within 10%",
           {"stage2": StageRule("lora", data="stage2", match_params_of="neurorit")}),
    Method("random_neurons", "Neuro-RIT's two stages with each layer's neurons replaced by random ones",
           {"stage1": StageRule("neurons", groups=("irrelevant_only",), random=True, data="stage1"),
            "stage2": StageRule("neurons", groups=ALL_GROUPS, random=True, target_layers=True, data="stage2")}),
    Method("neurorit_stage1", "Neuro-RIT after stage 1 only (noise suppression)", {"stage1": _NEURORIT_STAGE1},
           role="neurorit", run_of="neurorit"),
    Method("neurorit", "Neuro-RIT: stage 1 (irrelevant-only neurons -> EOS on noise), then stage 2 (all groups "
           "+ target-layer FFNs -> evidence)", {"stage1": _NEURORIT_STAGE1, "stage2": _NEURORIT_STAGE2},
           role="neurorit"),
    Method("neurorit_hard_deactivation", "the base model with its irrelevant-only neurons switched off (folded "
           "into the weights at export)", {"stage1": StageRule("nothing", export="fold_irrelevant_only")},
           role="neurorit"),
    Method("full", "full fine-tuning of every parameter on each stage's own data (a reference, not reported)",
           {"stage1": StageRule("all", data="stage1"), "stage2": StageRule("all", data="stage2")}, role="reference"),
    Method("none", "train nothing: the stage re-exports its input (for tests and plumbing)",
           {"stage1": StageRule("nothing"), "stage2": StageRule("nothing", data="stage2")}, role="reference"),
)
METHODS: dict[str, Method] = {m.name: m for m in _ENTRIES}
REPORT_ORDER = tuple(m.name for m in _ENTRIES if m.reported)


def get(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
    return METHODS[name]


def stage_methods(stage: str) -> tuple[str, ...]:
    """The names ``stage<N>.method`` accepts."""
    return tuple(m.name for m in METHODS.values() if stage in m.stages and not m.run_of)
