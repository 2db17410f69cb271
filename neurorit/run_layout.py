"""The run layout: every file and folder one stage passes to the next, and every done marker, named in one place
(docs/DESIGN.md §4). The stages, the demo, the report, the analysis script and (through the CLI below) the SLURM
scripts ask this module for paths instead of joining them.

Under ``runtime.output_dir`` (each overridable by its ``<section>.output_dir`` key):

- ``mining/``: ``neuron_map.safetensors`` / ``.json``, ``summary.txt`` (written last: the done marker),
  ``neuron_map.png``, per-rank ``stats/`` shards; ``diagnosis.txt`` / ``.json`` from ``neurorit-diagnose`` (or
  ``mining.target auto``);
- ``<stage>/`` for a standalone stage, ``<method>/<stage>/`` in the demo (one folder per method): ``config.yaml``,
  ``tb/``, ``checkpoints/step<N>/``, ``export/`` (a plain Hugging Face checkpoint) and ``train_summary.json``
  (written after the export: the done marker);
- ``eval/``: ``<name>.eval.json`` (written last: the done marker), ``<name>.predictions.jsonl`` and, while a run is
  unfinished, ``<name>.partial/``;
- ``selection/`` when the demo chooses on dev (``RunLayout.selection``); ``timings.json``, the demo's minutes per
  step;
- ``results.json`` / ``results.md`` / ``results.png`` from the report.

    python -m neurorit.run_layout export stage2 --config configs/x.yaml [overrides]    # prints <out>/stage2/export
    python -m neurorit.run_layout trained-params <export dir>  # the trainable count over the stages behind it
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

SUMMARY = "train_summary.json"
EVAL_SUFFIX = ".eval.json"
PREDICTIONS_SUFFIX = ".predictions.jsonl"


@dataclass(frozen=True)
class MiningFiles:
    """The files of one mining output folder (``neurorit/neuron_map.py`` names the map's own two files)."""

    root: str

    @property
    def summary(self) -> str:
        """``summary.txt``, written last by mining: its done marker."""
        return os.path.join(self.root, "summary.txt")

    @property
    def picture(self) -> str:
        return os.path.join(self.root, "neuron_map.png")

    @property
    def stats(self) -> str:
        """Per-rank statistics shards (resume)."""
        return os.path.join(self.root, "stats")

    @property
    def diagnosis(self) -> str:
        """``diagnosis.txt`` (``attribution/diagnose.py``, also under ``mining.target auto``): every target's
        separation on the mining split, the choice and the verdict; written after ``diagnosis.json``."""
        return os.path.join(self.root, "diagnosis.txt")

    @property
    def diagnosis_json(self) -> str:
        return os.path.join(self.root, "diagnosis.json")


@dataclass(frozen=True)
class StageFiles:
    """The files of one training stage's output folder."""

    root: str

    @property
    def export(self) -> str:
        return os.path.join(self.root, "export")

    @property
    def summary(self) -> str:
        """``train_summary.json``, written after the export: the stage's done marker."""
        return os.path.join(self.root, SUMMARY)

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, "checkpoints")

    @property
    def tensorboard(self) -> str:
        return os.path.join(self.root, "tb")


@dataclass(frozen=True)
class EvalFiles:
    """The files of one evaluated model (``--name``) in an evaluation folder."""

    folder: str
    name: str

    @property
    def result(self) -> str:
        """``<name>.eval.json``, written last: the evaluation's done marker."""
        return os.path.join(self.folder, self.name + EVAL_SUFFIX)

    @property
    def predictions(self) -> str:
        return os.path.join(self.folder, self.name + PREDICTIONS_SUFFIX)

    @property
    def partial(self) -> str:
        return os.path.join(self.folder, f"{self.name}.partial")


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run, from ``runtime.output_dir`` and the sections' ``output_dir`` overrides."""

    root: str
    mining_dir: str = ""
    stage_dirs: tuple = ()  # ((stage, folder), ...) from stage<N>.output_dir
    eval_folder: str = ""

    @classmethod
    def of(cls, cfg) -> "RunLayout":
        """The layout an experiment config describes."""
        stages = tuple((s, getattr(cfg, s).output_dir) for s in ("stage1", "stage2") if getattr(cfg, s).output_dir)
        return cls(cfg.runtime.output_dir, cfg.mining.output_dir, stages, cfg.eval.output_dir)

    # ------------------------------------------------------------------------------------------------ mining
    @property
    def mining(self) -> MiningFiles:
        return MiningFiles(self.mining_dir or os.path.join(self.root, "mining"))

    def mining_variant(self, name: str) -> MiningFiles:
        """Another mining of the same run (the demo's ``--why``: ``mining_<target>``)."""
        return MiningFiles(os.path.join(self.root, f"mining_{name}"))

    # ------------------------------------------------------------------------------------------------ stages
    def stage(self, stage: str, method: str = "") -> StageFiles:
        """A stage's folder: ``stage<N>.output_dir`` when set; else ``<root>/<method>/<stage>`` when a method
        is named (the demo's one folder per method), else ``<root>/<stage>``."""
        explicit = dict(self.stage_dirs).get(stage)
        if explicit and not method:
            return StageFiles(explicit)
        return StageFiles(os.path.join(self.root, method, stage) if method else os.path.join(self.root, stage))

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluation(self, folder: str = "") -> str:
        """An evaluation folder: ``folder`` (relative to the root), else ``eval.output_dir``, else ``<root>/eval``."""
        if folder:
            return os.path.join(self.root, folder)
        return self.eval_folder or os.path.join(self.root, "eval")

    def results(self, folder: str = "") -> dict:
        """The report's files in ``<root>/<folder>``."""
        base = os.path.join(self.root, folder)
        return {ext: os.path.join(base, f"results.{ext}") for ext in ("json", "md", "png")}

    def variants(self, *parts: str) -> str:
        """The demo's ``--why`` variants folder."""
        return os.path.join(self.root, "variants", *parts)

    @property
    def timings(self) -> str:
        """The demo's minutes per step over every run into this folder (``timings.json``)."""
        return os.path.join(self.root, "timings.json")

    def selection(self, *parts: str) -> str:
        """The demo's dev selection (``selection.*``, ``rag/selection.py``): ``stage1/<point>/`` (stage-1 trials
        with their ``probe.json``), ``<method>/lr<value>/stage2/`` (learning-rate trials), ``eval/`` (their dev
        evaluations) and ``selection.json`` (the choices)."""
        return os.path.join(self.root, "selection", *parts)


def eval_files(folder: str, name: str) -> EvalFiles:
    return EvalFiles(folder, name)


def read_summary(export_dir: str) -> Optional[dict]:
    """The ``train_summary.json`` of the stage that wrote ``export_dir``, or None (a base model)."""
    path = os.path.join(os.path.dirname(os.path.normpath(export_dir)), SUMMARY)
    if os.path.basename(os.path.normpath(export_dir)) != "export" or not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def trained_params(export_dir: str) -> int:
    """Trainable parameters over every stage behind ``export_dir``: its stage's count plus, following each
    summary's ``init_from``, the counts of the stages it started from (0 for a base model)."""
    total, seen = 0, set()
    summary = read_summary(export_dir)
    while summary is not None and summary.get("export_dir") not in seen:
        seen.add(summary.get("export_dir"))
        total += int(summary.get("trainable_params") or 0)
        summary = read_summary(summary.get("init_from", ""))
    return total


def main(argv=None) -> None:
    from neurorit.config import parse_args

    def extra(parser):  # the entry points' own flags may travel with the config arguments: accepted, unused
        for flag in ("--model", "--name", "--trainable-params", "--resume", "--stop_after"):
            parser.add_argument(flag)
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("what", choices=("export", "summary", "mining", "eval", "trained-params"))
        parser.add_argument("arg", nargs="?", default="",
                            help="export / summary: the stage (stage1, stage2); trained-params: an export folder")

    args, cfg = parse_args("Print a path of the run layout (for shell scripts).", argv, extra=extra)
    layout = RunLayout.of(cfg)
    if args.what == "trained-params":
        print(trained_params(args.arg))
    elif args.what in ("export", "summary"):
        files = layout.stage(args.arg or "stage2")
        print(files.export if args.what == "export" else files.summary)
    else:
        print(layout.mining.root if args.what == "mining" else layout.evaluation())


if __name__ == "__main__":
    sys.exit(main())
