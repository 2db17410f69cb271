"""The run layout: every file and folder one stage passes to the next, and every done marker, named in one place
(docs/DESIGN.md §4). The stages, the demo, the report, the analysis script and (through the CLI below) the SLURM
scripts ask this module for paths instead of joining them.

Under ``runtime.output_dir`` (each overridable by its ``<section>.output_dir`` key):

- ``mining/``: ``neuron_map.safetensors`` / ``.json``, ``summary.txt`` (written last: the done marker),
  ``neuron_map.png``, ``neuron_stats.safetensors``, ``diagnostics.json``, ``throughput.json``, ``config.yaml``,
  ``tensorboard/``, per-rank ``stats/`` shards; ``diagnosis.txt`` / ``.json`` from ``neurorit-diagnose`` (or
  ``mining.target auto``);
- ``<stage>/`` for a standalone stage, ``<method>/<stage>/`` in the demo (one folder per method): ``config.yaml``,
  ``tensorboard/``, ``checkpoints/step<N>/``, ``export/`` (a plain Hugging Face checkpoint) and
  ``train_summary.json`` (written after the export: the done marker);
- ``eval/``: ``<name>.eval.json`` (written last: the done marker), ``<name>.predictions.jsonl``,
  ``<name>.config.yaml``, ``tensorboard/<name>_<instruction>/`` and, while a run is unfinished, ``<name>.partial/``;
- ``selection/`` when the demo chooses on dev (``RunLayout.selection``); ``timings.json``, the demo's minutes per
  step;
- ``results.json`` / ``results.md`` / ``results.png`` from the report; ``analysis.json`` / ``analysis.md`` from the
  run analysis.

A committed result folder (``collect``: ``results/<name>/``, no weights) also holds every test evaluation's
per-question answers, gzip-compressed: ``predictions/<name>.predictions.jsonl.gz`` (``predictions/eval_<instruction>/``
and ``predictions/variants/`` for the other instructions and the ``--why`` variants); ``rag/analysis.py`` reads them.

Every TensorBoard folder is called ``tensorboard/`` (``TENSORBOARD``).

    python -m neurorit.run_layout export stage2 --config configs/x.yaml [overrides]    # prints <out>/stage2/export
    python -m neurorit.run_layout done mining --config configs/x.yaml       # a stage's done marker (mining, stage<N>)
    python -m neurorit.run_layout eval-result base --config configs/x.yaml  # <eval folder>/base.eval.json
    python -m neurorit.run_layout report --config configs/x.yaml            # the report's results.json
    python -m neurorit.run_layout trained-params <export dir>  # the trainable count over the stages behind it
    python -m neurorit.run_layout collect results/x --config configs/x.yaml  # a run's committed files, no weights
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
COMMITTED_PREDICTIONS_SUFFIX = PREDICTIONS_SUFFIX + ".gz"  # the per-question answers a result folder commits
COMMITTED_PREDICTIONS = "predictions"  # their folder in a result folder
CONFIG = "config.yaml"
TENSORBOARD = "tensorboard"
WANDB, MLRUNS = "wandb", "mlruns"  # the other trackers' folders, beside tensorboard/ in a stage's folder
BASE_MODEL_HISTORY = "training_history.json"  # scripts/train_base_model.py's done marker in the model folder


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
    def config(self) -> str:
        return os.path.join(self.root, CONFIG)

    @property
    def statistics(self) -> str:
        """The reduced statistics of every rank (safetensors)."""
        return os.path.join(self.root, "neuron_stats.safetensors")

    @property
    def diagnostics(self) -> str:
        return os.path.join(self.root, "diagnostics.json")

    @property
    def throughput(self) -> str:
        """Questions per minute of the run (apart from the summary, which is byte-stable across runs)."""
        return os.path.join(self.root, "throughput.json")

    @property
    def tensorboard(self) -> str:
        return os.path.join(self.root, TENSORBOARD)

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
    def config(self) -> str:
        return os.path.join(self.root, CONFIG)

    @property
    def tensorboard(self) -> str:
        return os.path.join(self.root, TENSORBOARD)

    @property
    def wandb(self) -> str:
        return os.path.join(self.root, WANDB)

    @property
    def mlruns(self) -> str:
        """MLflow's local file store when no ``MLFLOW_TRACKING_URI`` is set."""
        return os.path.join(self.root, MLRUNS)

    def run_id(self, tracker: str) -> str:
        """The id of the wandb / MLflow run this stage opened (a resumed stage continues it)."""
        return os.path.join(self.root, f"{tracker}_run_id")

    @property
    def probe(self) -> str:
        """The stage-1 probe of this stage's export (``rag/stage1_probe.py``; the demo's stage-1 trials)."""
        return os.path.join(self.root, "probe.json")


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

    @property
    def config(self) -> str:
        return os.path.join(self.folder, f"{self.name}.{CONFIG}")

    def tensorboard(self, instruction: str) -> str:
        """The evaluation's TensorBoard run, one per instruction."""
        return os.path.join(self.folder, TENSORBOARD, f"{self.name}_{instruction}")


def evaluated_names(folder: str) -> dict:
    """``{name: <name>.eval.json}`` of every finished evaluation in ``folder``, by name."""
    files = sorted(n for n in os.listdir(folder) if n.endswith(EVAL_SUFFIX)) if os.path.isdir(folder) else []
    return {n[: -len(EVAL_SUFFIX)]: os.path.join(folder, n) for n in files}


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

    def instruction_evaluation(self, instruction: str, headline: bool) -> str:
        """The demo's evaluation folder for an inference instruction: ``<root>/eval`` for the headline one,
        ``<root>/eval_<instruction>`` for the others."""
        return self.evaluation("eval" if headline else f"eval_{instruction}")

    def instruction_root(self, instruction: str, headline: bool) -> str:
        """Where the demo's report of an instruction goes: the root for the headline one, ``<root>/<instruction>``
        for the others."""
        return self.root if headline else os.path.join(self.root, instruction)

    def results(self, folder: str = "") -> dict:
        """The report's files in ``<root>/<folder>``."""
        return results_files(os.path.join(self.root, folder))


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

    def done_marker(self, step: str) -> str:
        """The done marker of ``step``: ``mining``, a stage (``stage1``, ``stage2``) or ``eval:<name>`` (an
        evaluation in the run's evaluation folder)."""
        if step == "mining":
            return self.mining.summary
        if step.startswith("eval:"):
            return eval_files(self.evaluation(), step.split(":", 1)[1]).result
        return self.stage(step).summary

    @property
    def dev_evaluation(self) -> str:
        """``selection/eval/``: the dev evaluations of the selection's trials."""
        return self.selection("eval")

    @property
    def variants_evaluation(self) -> str:
        """``variants/eval/``: the evaluations of the demo's ``--why`` variants."""
        return self.variants("eval")

    @property
    def selection_record(self) -> str:
        """``selection/selection.json``: the dev selection's rules, trials and choices (the report copies it)."""
        return self.selection("selection.json")

    def test_evaluations(self) -> dict:
        """``{folder in a result folder: evaluation folder}`` of every test evaluation of the run: the headline one
        (``predictions``), each other instruction's (``predictions/eval_<instruction>``) and the ``--why``
        variants' (``predictions/variants``)."""
        root = self.root
        others = sorted(n for n in (os.listdir(root) if os.path.isdir(root) else [])
                        if n.startswith("eval_") and os.path.isdir(os.path.join(root, n)))
        return {COMMITTED_PREDICTIONS: self.evaluation(),
                **{os.path.join(COMMITTED_PREDICTIONS, n): os.path.join(root, n) for n in others},
                os.path.join(COMMITTED_PREDICTIONS, "variants"): self.variants_evaluation}


def committed_files(layout: RunLayout) -> dict:
    """What a committed result folder (``results/<run>/``) holds of a finished run, no weights:
    ``{path in the result folder: path in the run}``, only the files that exist."""
    mining, run = layout.mining, layout.root
    files = {os.path.basename(p): p for p in (*results_files(run).values(), *analysis_files(run).values(),
                                               layout.timings)}
    files.update({"mining_summary.txt": mining.summary, "mining_diagnostics.json": mining.diagnostics,
                  "mining_throughput.json": mining.throughput, "neuron_map.png": mining.picture,
                  "diagnosis.txt": mining.diagnosis, "diagnosis.json": mining.diagnosis_json})
    files.update({n: os.path.join(run, n) for n in (os.listdir(run) if os.path.isdir(run) else [])
                  if n.startswith("bench_") and n.endswith(".json")})
    files.update({os.path.join("dev_evals", n + EVAL_SUFFIX): p
                  for n, p in evaluated_names(layout.dev_evaluation).items()})
    trials = layout.selection("stage1")
    for tag in sorted(os.listdir(trials)) if os.path.isdir(trials) else []:
        files[os.path.join("stage1_probes", tag + ".json")] = StageFiles(os.path.join(trials, tag)).probe
    files[os.path.join("stage1_probes", "random_neurons.json")] = layout.stage("stage1", "random_neurons").probe
    for into, folder in layout.test_evaluations().items():
        files.update({os.path.join(into, n + COMMITTED_PREDICTIONS_SUFFIX): eval_files(folder, n).predictions
                      for n in evaluated_names(folder)})
    # what the analysis recomputes the parameter breakdown and the neuron tables from
    from neurorit.neuron_map import MAP_JSON

    files["neuron_map.json"] = os.path.join(mining.root, MAP_JSON)
    files.update({os.path.join("stages", name, SUMMARY): stage.summary for name, stage in stage_folders(run).items()})
    return {dest: src for dest, src in files.items() if os.path.isfile(src)}


def stage_folders(run: str) -> dict[str, StageFiles]:
    """``{"<method>/<stage>" (relative to ``run``): StageFiles}`` of every finished stage under ``run``."""
    import glob

    summaries = sorted(glob.glob(os.path.join(run, "**", SUMMARY), recursive=True))
    return {os.path.relpath(os.path.dirname(p), run): StageFiles(os.path.dirname(p)) for p in summaries}


def collect(layout: RunLayout, into: str) -> list[str]:
    """Copy ``committed_files(layout)`` into the folder ``into`` (per-question answers gzip-compressed, with no
    time stamp so the same answers give the same bytes); returns the copied names."""
    import gzip
    import shutil

    copied = []
    for dest, src in sorted(committed_files(layout).items()):
        target = os.path.join(into, dest)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if dest.endswith(".gz") and not src.endswith(".gz"):
            with open(src, "rb") as fh, open(target, "wb") as raw, \
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
                shutil.copyfileobj(fh, out)
        else:
            shutil.copyfile(src, target)
        copied.append(dest)
    return copied


def eval_files(folder: str, name: str) -> EvalFiles:
    return EvalFiles(folder, name)


def results_files(folder: str) -> dict:
    """The report's ``results.json`` / ``.md`` / ``.png`` in ``folder``."""
    return {ext: os.path.join(folder, f"results.{ext}") for ext in ("json", "md", "png")}


def analysis_files(folder: str) -> dict:
    """The run analysis's ``analysis.json`` / ``.md`` in ``folder`` (``rag/analysis.py``)."""
    return {ext: os.path.join(folder, f"analysis.{ext}") for ext in ("json", "md")}


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
        parser.add_argument("what", choices=("root", "export", "summary", "mining", "done", "eval", "eval-result",
                                             "report", "trained-params", "collect"))
        parser.add_argument("arg", nargs="?", default="",
                            help="export / summary: the stage (stage1, stage2); done: mining, stage1 or stage2 (its done "
                                 "marker); eval-result: the evaluated name; trained-params: an export folder; "
                                 "collect: the result folder to copy the run's committed files into")

    args, cfg = parse_args("Print a path of the run layout (for shell scripts).", argv, extra=extra)
    layout = RunLayout.of(cfg)
    if args.what == "trained-params":
        print(trained_params(args.arg))
    elif args.what == "collect":
        copied = collect(layout, args.arg)
        print(f"copied {len(copied)} files of {layout.root} into {args.arg}")
    elif args.what in ("export", "summary"):
        files = layout.stage(args.arg or "stage2")
        print(files.export if args.what == "export" else files.summary)
    elif args.what == "done":
        print(layout.done_marker(args.arg or "stage2"))
    elif args.what == "eval-result":
        print(layout.done_marker(f"eval:{args.arg}"))
    elif args.what == "report":
        print(layout.results()["json"])
    else:
        print({"root": layout.root, "mining": layout.mining.root}.get(args.what) or layout.evaluation())


if __name__ == "__main__":
    sys.exit(main())
