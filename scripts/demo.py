"""The whole Neuro-RIT pipeline on one experiment config, on CPU, end to end.

    python scripts/demo.py --config configs/embedded.yaml [--quick] [--ranks 2]      (what `make demo` runs)
    python scripts/demo.py --config configs/smollm2.yaml --instructions answer_only  (`make experiment-smollm`)

Steps (each skipped when its output already exists, so a re-run continues where it stopped): the benchmark
(``data.benchmark``: ``benchmarks/embedded`` or ``benchmarks/english``) -> the base model (embedded: the
committed one, trained only if missing; otherwise ``model.path`` must hold one, e.g. from ``make real-model``)
-> with ``--diagnose``, the separation probe of every attribution target (``attribution/diagnose.py``, one
process; ``mining.target auto`` then reuses it) -> mine (ZeRO-3 over ``--ranks`` ranks, launched with torchrun) ->
every method of ``neurorit/methods.py``
(Neuro-RIT's stages, hard deactivation, the baselines), each in ``<output_dir>/<method>/<stage>`` ->
evaluation of every method with the two-step instruction -> results.json, results.md and the chart in
``runtime.output_dir``; then the same with the answer-only instruction -> ``<output_dir>/answer_only/``; with
``--why``, the measurements of ``Pipeline.why`` -> ``analysis.md``. Every
method starts from the same base model with the same step budget (``stage1.max_steps`` / ``stage2.max_steps``).

With ``selection.*`` set (configs/smollm2.yaml), choices are made on dev first, by the rules of
``rag/selection.py``: stage 1's budget and learning rate (the stage-1 probe and dev gold-only Match), then each
trained method's stage-2 learning rate from one grid; the trials live in ``<output_dir>/selection/``, the choices in
``selection/selection.json``, which the report copies into results.json. ``--controls`` adds the map's controls
(``neurorit/methods.py``, role ``control``) to the methods run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from neurorit import methods
from neurorit.config import load_config
from neurorit.errors import UserError, main_guard
from neurorit.files import atomic_write_text
from neurorit.runtime import PINNED_KERNELS
from model_patches.loading import resolve_model
from neurorit.run_layout import BASE_MODEL_HISTORY, RunLayout, StageFiles, eval_files
from rag import selection
from train.recipes import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

# Quick variant: smaller budgets and no trained baselines (a first look within about five minutes).
QUICK = ["--mining.num_examples", "24", "--stage1.max_steps", "30", "--stage2.max_steps", "30",
         "--eval.num_examples", "100", "--runtime.output_dir", "outputs/demo-quick"]


def launch(ranks: int, script: str, args: list[str]) -> list[str]:
    """``torchrun`` for several ranks (it starts faster than the deepspeed launcher; the code is launcher-agnostic);
    ``script`` is relative to the checkout."""
    script = os.path.join(ROOT, script)
    if ranks > 1:
        exe = shutil.which("torchrun", path=os.path.dirname(PY)) or "torchrun"
        return [exe, "--nproc_per_node", str(ranks), "--master_port", str(29500 + os.getpid() % 1000), script, *args]
    return [PY, script, *args]


def runs(method: methods.Method, baselines: bool, controls: bool, only: tuple[str, ...]) -> bool:
    """Whether the demo runs ``method``: the names in ``only`` when given; else the reported methods (no trained
    baselines without ``baselines``), and the map's controls with ``controls``."""
    if only:
        return method.name in only
    return (method.reported and (baselines or method.role != "baseline")) or (controls and method.role == "control")


class Pipeline:
    def __init__(self, config: str, overrides: list[str], ranks: int, baselines: bool = True,
                 instructions: tuple[str, ...] = ("two_step", "answer_only"), controls: bool = False,
                 only: tuple[str, ...] = (), diagnose: bool = False):
        # every step runs in the caller's working directory, so a relative path means the same in this process
        # (done markers) and in its steps; the config file's own paths are relative to the file (neurorit/config.py)
        self.config, self.overrides, self.ranks = os.path.abspath(config), overrides, ranks
        self.diagnose = diagnose
        # the first instruction is the headline (its results go to output_dir); others to output_dir/<name>
        self.instructions = instructions
        self.cfg = load_config(config, overrides)
        self.layout = RunLayout.of(self.cfg)
        self.timings: list[tuple[str, float, str]] = []
        # every step's minutes over all runs into this output folder (a resumed run keeps the earlier ones)
        self.measured: dict[str, float] = {}
        if os.path.isfile(self.layout.timings):
            with open(self.layout.timings) as fh:
                self.measured = json.load(fh)
        self.chosen: dict[tuple[str, str], str] = {}  # (method, stage) -> the export the dev selection chose
        self.stage1_extra: tuple = ()  # the chosen stage-1 point's overrides, for every stage 1
        self.record: dict = {"stage1": {}, "stage2": {}}  # -> selection/selection.json
        self.run_names = [m.name for m in methods.METHODS.values() if runs(m, baselines, controls, only)]

    def args(self, *extra: str) -> list[str]:
        return ["--config", self.config, *self.overrides, *extra]

    def step(self, name: str, done_marker: str, cmd: list[str]) -> None:
        if done_marker and os.path.exists(done_marker):
            self.timings.append((name, 0.0, "already done"))
            print(f"== {name}: already done ({done_marker})", flush=True)
            return
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p),
                   **{k: os.environ.get(k, v) for k, v in PINNED_KERNELS.items()})
        res = subprocess.run(cmd, env=env)  # in the caller's working directory, this checkout's code
        if res.returncode != 0:
            raise UserError(f"step '{name}' failed (exit {res.returncode}); fix the cause and re-run: finished "
                            f"steps are kept")
        seconds = time.time() - t0
        self.timings.append((name, seconds, done_marker))
        self.measured[name] = round(seconds / 60, 2)
        atomic_write_text(self.layout.timings, json.dumps(self.measured, indent=1) + "\n")

    def train(self, name: str, stage: str, init_from: str, files: StageFiles | None = None,
              extra: tuple = ()) -> str:
        """Run ``stage`` of method ``name`` (with ``extra`` overrides) into ``files``, by default its folder of
        the layout, ``<output_dir>/<name>/<stage>``; returns its export folder. Every stage 1 gets the dev
        selection's point."""
        files = files or self.layout.stage(stage, name)
        extra = (*self.stage1_extra, *extra) if stage == "stage1" else extra
        overrides = [f"--{stage}.method", name, *extra, f"--{stage}.output_dir", files.root,
                     f"--{stage}.init_from", init_from]
        label = os.path.relpath(files.root, self.layout.root)
        self.step(f"train {name} {stage} ({label})", files.summary,
                  launch(self.ranks, f"train/{stage}.py", self.args(*overrides)))
        return files.export

    def run_method(self, method: methods.Method) -> str:
        """Train the method's stages in order (stage 2 from its own stage 1 when it has both, else from the base
        model), each at the dev selection's choice when there is one; returns the model to evaluate."""
        model = self.cfg.model.path
        name = method.run_of or method.name
        for stage in method.stages:
            if (name, stage) in self.chosen:
                model = self.chosen[(name, stage)]
            elif stage == "stage2" and self.cfg.selection.lrs and build(method.rule(stage)).trains:
                model = self.select_lr(method, model)
            else:
                model = self.train(name, stage, model)
        return model

    def evaluate(self, name: str, model: str, instruction: str, folder: str = "", extra: tuple = ()) -> dict:
        """Evaluate ``model`` as ``name`` into ``folder`` (default: the instruction's evaluation folder); returns
        its summary (``<name>.eval.json``)."""
        label = f"evaluate {name} ({instruction})"
        if folder:  # another folder (the dev selection's): its own entry in timings.json
            label = f"evaluate {name} ({instruction}, {os.path.relpath(folder, self.layout.root)})"
        folder = folder or self.eval_folder(instruction)
        cmd = launch(self.ranks, "rag/evaluate.py",
                     self.args("--model", model, "--name", name,  # evaluation counts the stages behind the model
                               "--eval.instruction", instruction, "--eval.output_dir", folder, *extra))
        result = eval_files(folder, name).result
        self.step(label, result, cmd)
        with open(result) as fh:
            return json.load(fh)

    # ------------------------------------------------------------------------------------- dev selection
    def dev_evaluate(self, name: str, model: str, settings: list[str]) -> dict:
        """Evaluate on the dev questions, headline instruction, into ``selection/eval``: at most
        ``selection.dev_per_kind`` of each ``eval.kinds`` (the test's mix) when set, else the first
        ``selection.dev_examples``."""
        sel = self.cfg.selection
        pick = (("--eval.max_per_kind", str(sel.dev_per_kind), "--eval.num_examples", "-1") if sel.dev_per_kind
                else ("--eval.num_examples", str(sel.dev_examples)))
        extra = ("--data.test_file", self.cfg.data.dev_file, "--eval.settings", ",".join(settings), *pick)
        return self.evaluate(name, model, self.instructions[0], self.layout.dev_evaluation, extra)

    def select_stage1(self) -> None:
        """Stage 1's budget and learning rate by the rule of ``rag/selection.py``, tried on Neuro-RIT's stage 1 (the
        grid, then bisection points when none passed); the chosen point's overrides then go to every stage 1."""
        sel = self.cfg.selection
        grid = selection.stage1_grid(sel)
        if not grid:
            return
        base_gold = selection.match_of(self.dev_evaluate("base", self.cfg.model.path, ["gold"]), "gold")
        trials, exports = [], []
        for steps, lr in grid:
            self.stage1_trial(steps, lr, base_gold, trials, exports)
            if trials[-1]["passes"]:
                break
        while (lr := selection.stage1_bisect_lr(trials, sel)) is not None:
            self.stage1_trial(max(sel.stage1_steps), lr, base_gold, trials, exports)
            trials[-1]["bisected"] = True
        choice = selection.pick_stage1(trials, sel)
        export, self.stage1_extra = exports[choice["index"]]
        self.chosen[("neurorit", "stage1")] = export
        self.record["stage1"] = {"trials": trials, **choice, "chosen": trials[choice["index"]]}
        verdict = "reached" if choice["reached"] else "NOT reached"
        print(f"== stage-1 selection: {trials[choice['index']]} (rule {verdict})", flush=True)
        if "random_neurons" in self.run_names:
            chosen = trials[choice["index"]]
            mined = StageFiles(self.layout.selection("stage1", selection.point_tag(chosen["max_steps"], chosen["lr"])))
            self.record["stage1"]["mined_vs_random"] = self.mined_vs_random(mined.probe)

    def mined_vs_random(self, mined_probe: str) -> dict:
        """``random_neurons``' stage 1 at the chosen point (its own run folder, reused by its run), probed on the same
        dev questions as the chosen mined point and compared with it (``selection.mined_vs_random_stage1``)."""
        export = self.train("random_neurons", "stage1", self.cfg.model.path)
        files = self.layout.stage("stage1", "random_neurons")
        self.probe_stage1("random_neurons", export, files.probe)
        with open(mined_probe) as fh, open(files.probe) as gh:
            result = selection.mined_vs_random_stage1(json.load(fh), json.load(gh))
        print(f"== stage 1, mined vs random neurons on dev: {result}", flush=True)
        return result

    def probe_stage1(self, tag: str, export: str, out: str) -> None:
        """The stage-1 probe (``rag/stage1_probe.py``) of ``export`` on the dev questions of ``dev_evaluate``,
        headline instruction, into ``out``."""
        sel = self.cfg.selection
        pick = (("--kinds", *self.cfg.eval.kinds, "--max-per-kind", str(sel.dev_per_kind)) if sel.dev_per_kind
                else ("--num-examples", str(sel.dev_examples)))
        threads = self.ranks * self.cfg.runtime.torch_threads  # one process: the ranks' threads (0: torch's)
        self.step(f"stage-1 probe ({tag})", out,
                  [PY, "-m", "rag.stage1_probe", *self.args(
                      "--model", export, "--split", "dev", *pick, "--eval.instruction", self.instructions[0],
                      "--runtime.torch_threads", str(threads), "--out", out)])

    def stage1_trial(self, steps: int, lr: float, base_gold: float, trials: list, exports: list) -> None:
        """Neuro-RIT's stage 1 at one point, its dev probe and dev gold-only Match: appends the trial's record to
        ``trials`` and ``(export, overrides)`` to ``exports``."""
        sel = self.cfg.selection
        extra = ("--stage1.max_steps", str(steps), "--stage1.lr", repr(lr))
        tag = selection.point_tag(steps, lr)
        files = StageFiles(self.layout.selection("stage1", tag))
        export = self.train("neurorit", "stage1", self.cfg.model.path, files, extra)
        self.probe_stage1(tag, export, files.probe)
        with open(files.probe) as fh:
            probe = json.load(fh)
        gold = selection.match_of(self.dev_evaluate(f"neurorit_stage1_{tag}", export, ["gold"]), "gold")
        trials.append(selection.stage1_trial(steps, lr, probe, gold, base_gold, sel))
        exports.append((export, extra))

    def stage2_start(self, method: methods.Method) -> str:
        """Where the method's stage 2 starts: its own stage-1 export (trained here unless done), else the base
        model."""
        if not method.chains():
            return self.cfg.model.path
        return self.chosen.get((method.name, "stage1")) or self.train(method.name, "stage1", self.cfg.model.path)

    def lr_arms(self, method: methods.Method, init_from: str) -> list[tuple[methods.Method, str]]:
        """The arms one stage-2 learning rate is chosen for: the method alone, or with ``share_control_lr`` the
        method and its random control (or mined arm) when this run trains both."""
        arms = [(method, init_from)]
        if not self.cfg.selection.share_control_lr:
            return arms
        partners = [m for m in methods.METHODS.values() if m.name in self.run_names and m.name != method.name
                    and (m.control_of == method.name or m.name == method.control_of)]
        return arms + [(m, self.stage2_start(m)) for m in partners[:1]]

    def select_lr(self, method: methods.Method, init_from: str) -> str:
        """Train the method's stage 2 (with its paired arm, ``lr_arms``) at every learning rate of
        ``selection.lrs``, then beyond an edge that wins (``selection.widen``); returns the export the dev criterion
        picks (the paired arm's is recorded as chosen for it)."""
        sel = self.cfg.selection
        arms = self.lr_arms(method, init_from)
        keys = {arm.name: build(arm.rule("stage2")).lr_key for arm, _ in arms}
        scores, exports, pending = [], {}, list(sel.lrs)
        while pending:
            lr = pending.pop(0)
            exports[lr], values = {}, []
            for arm, start in arms:
                tag = f"lr{lr:g}"
                exports[lr][arm.name] = self.train(arm.name, "stage2", start,
                                                   StageFiles(self.layout.selection(arm.name, tag, "stage2")),
                                                   (f"--stage2.{keys[arm.name]}", repr(lr)))
                summary = self.dev_evaluate(f"{arm.name}_{tag}", exports[lr][arm.name], list(sel.settings))
                values.append(selection.dev_score(summary, sel.settings))
            scores.append((lr, sum(values) / len(values)))
            if not pending and (wider := selection.widen_lr(scores, sel)) is not None:
                pending.append(wider)
        chosen = selection.pick_lr(scores)
        for arm, _ in arms:
            shared = [a.name for a, _ in arms if a.name != arm.name]
            self.record["stage2"][arm.name] = {"key": f"stage2.{keys[arm.name]}",
                                               "scores": [list(s) for s in scores], "chosen": chosen,
                                               "interior": selection.interior(scores),
                                               **({"shared_with": shared[0]} if shared else {})}
            self.chosen[(arm.name, "stage2")] = exports[chosen][arm.name]
        print(f"== {' + '.join(a.name for a, _ in arms)}: stage-2 lr {chosen:g} (dev scores {scores})", flush=True)
        return exports[chosen][method.name]

    def eval_folder(self, instruction: str) -> str:
        return self.layout.instruction_evaluation(instruction, instruction == self.instructions[0])

    def results_folder(self, instruction: str) -> str:
        return self.layout.instruction_root(instruction, instruction == self.instructions[0])

    def run(self) -> None:
        cfg = self.cfg
        if cfg.data.benchmark:
            self.step("benchmark", cfg.data.test_file, [PY, "-m", f"benchmarks.{cfg.data.benchmark}.benchmark",
                                                        *self.args()])
        if cfg.data.benchmark == "embedded":
            self.step("base model", os.path.join(cfg.model.path, BASE_MODEL_HISTORY),
                      [PY, os.path.join(ROOT, "scripts/train_base_model.py"), "--config", self.config, "--out",
                       cfg.model.path])
        elif os.path.isdir(cfg.model.path) and not os.path.isfile(os.path.join(cfg.model.path, "config.json")):
            raise UserError(f"model.path {cfg.model.path} holds no model (for configs/smollm2.yaml: make real-model)")
        elif not os.path.exists(cfg.model.path):
            resolve_model(cfg.model.path)  # a Hub id through the Hub cache, or one line saying why not
        mining = self.layout.mining
        if self.diagnose:
            threads = self.ranks * cfg.runtime.torch_threads  # one process: the ranks' threads (0: torch's)
            self.step("diagnose", mining.diagnosis_json, [PY, "-m", "attribution.diagnose", *self.args(
                "--runtime.torch_threads", str(threads))])
        self.step("mine", mining.summary, launch(self.ranks, "attribution/mine.py", self.args()))
        print(open(mining.summary).read(), flush=True)

        self.select_stage1()
        runs = [(m.name, self.run_method(m)) for m in methods.METHODS.values() if m.name in self.run_names]
        report_extra = []
        if self.record["stage1"] or self.record["stage2"]:
            record = selection.selection_record(cfg.selection, self.record["stage1"], self.record["stage2"])
            atomic_write_text(self.layout.selection_record, json.dumps(record, indent=1) + "\n")
            report_extra = ["--selection", self.layout.selection_record]
        if self.diagnose:  # the verdict again (the probe reused), now with the map and stage 1's mined vs random
            self.step("diagnose (verdict)", "", [PY, "-m", "attribution.diagnose", *self.args()])
        for instruction in self.instructions:
            for name, model in runs:
                self.evaluate(name, model, instruction)
            self.step(f"report ({instruction})", "", [PY, "-m", "rag.report", "--eval-dir", self.eval_folder(instruction),
                                                      "--out", self.results_folder(instruction), *report_extra])
        self.print_summary()

    def why(self) -> None:
        """After ``run``: measurements behind its numbers, each a variant of one choice, in ``variants/``:
        the same questions mined with the other IG target (``<output_dir>/mining_<target>``); Neuro-RIT's stage 2
        with the gate projections frozen, as the release trained it (``neurorit_gate_frozen``); Neuro-RIT's
        stage 1 with 5x its step budget, capped at ``stage1.epochs`` (``neurorit_stage1_long``: does it learn to
        stop on noise, and what does that do to gold-only?); the variants evaluated with the headline instruction
        into ``variants/eval``; then ``scripts/analyze_run.py`` over all of it -> ``analysis.md`` / ``.json``."""
        other = "answer_logprob" if self.cfg.mining.target == "yes_prob" else "yes_prob"
        mined = self.layout.mining_variant(other)
        self.step(f"mine ({other})", mined.summary, launch(
            self.ranks, "attribution/mine.py", self.args("--mining.target", other, "--mining.output_dir", mined.root)))
        stage1 = self.chosen.get(("neurorit", "stage1")) or self.layout.stage("stage1", "neurorit").export
        long_steps = str(5 * self.cfg.stage1.max_steps)
        variants = {  # name -> (stage, init_from, extra overrides)
            "neurorit_gate_frozen": ("stage2", stage1, ("--stage2.train_gate", "false")),
            "neurorit_stage1_long": ("stage1", self.cfg.model.path, ("--stage1.max_steps", long_steps)),
        }
        evals = self.layout.variants_evaluation
        for variant, (stage, init_from, extra) in variants.items():
            export = self.train("neurorit", stage, init_from, StageFiles(self.layout.variants(variant, stage)), extra)
            self.evaluate(variant, export, self.instructions[0], evals)
        self.step("analysis", "", [PY, os.path.join(ROOT, "scripts/analyze_run.py"), "--run", self.layout.root,
                                   "--config", self.config, "--eval-dir", self.eval_folder(self.instructions[0]),
                                   "--eval-dir", evals,
                                   "--compare-map", mined.root])

    def print_summary(self) -> None:
        print("\n== timings")
        for name, secs, note in self.timings:
            print(f"  {name:<48} {secs / 60:6.1f} min" + ("  (skipped: already done)" if note == "already done" else ""))
        print(f"  {'total':<48} {sum(t for _, t, _ in self.timings) / 60:6.1f} min")
        print(f"  {'total over every run into this folder':<48} {sum(self.measured.values()):6.1f} min "
              f"({self.layout.timings})")
        results = self.layout.results()
        print(f"\nresults: {results['md']}, {results['json']}, {results['png']}")
        for other in self.instructions[1:]:
            print(f"{other} instruction: {self.layout.results(other)['md']}")
        print(f"neuron map: {self.layout.mining.summary} and {self.layout.mining.picture}")
        print(f"TensorBoard: .venv/bin/tensorboard --logdir {self.layout.root}")
        md = results["md"]
        if os.path.exists(md):
            print("\n" + open(md).read())


@main_guard
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "embedded.yaml"))
    p.add_argument("--quick", action="store_true",
                   help="smaller budgets and no trained baselines: a first look within ~5 minutes")
    p.add_argument("--ranks", type=int, default=2, help="processes per distributed step (ZeRO-3 over gloo on CPU)")
    p.add_argument("--why", action="store_true",
                   help="then the measurements behind the numbers: mining with the other IG target, Neuro-RIT's "
                        "stage 2 with frozen gates, its stage 1 with 5x the steps, and scripts/analyze_run.py "
                        "(writes analysis.md)")
    controls = ", ".join(m.name for m in methods.METHODS.values() if m.role == "control")
    p.add_argument("--controls", action="store_true",
                   help=f"also the map's controls ({controls}), trained, evaluated and reported like the methods")
    p.add_argument("--methods", default="",
                   help="comma-separated methods to run instead (names of neurorit/methods.py, e.g. "
                        "base,neurorit,neurons_only,random_neurons_only); overrides --controls and --quick's choice")
    p.add_argument("--diagnose", action="store_true",
                   help="first neurorit-diagnose (every attribution target's separation on the mining split, "
                        "forward only) into the mining folder, with its minutes in timings.json")
    p.add_argument("--instructions", default="",
                   help="comma-separated inference instructions to evaluate; the first is the headline, reported in "
                        "runtime.output_dir, the others in output_dir/<instruction> (default: two_step,answer_only; "
                        "two_step with --quick)")
    args, rest = p.parse_known_args(argv)
    overrides = (QUICK if args.quick else []) + rest
    instructions = tuple(args.instructions.split(",")) if args.instructions else \
        (("two_step",) if args.quick else ("two_step", "answer_only"))
    if not set(instructions) <= {"two_step", "answer_only"} or len(set(instructions)) != len(instructions):
        raise UserError(f"--instructions {args.instructions!r}: two_step and/or answer_only, each once")
    only = tuple(n for n in args.methods.split(",") if n)
    for name in only:
        methods.get(name)  # an unknown name: one line listing the registry's
    pipeline = Pipeline(args.config, overrides, args.ranks, baselines=not args.quick, instructions=instructions,
                        controls=args.controls, only=only, diagnose=args.diagnose)
    pipeline.run()
    if args.why:
        pipeline.why()
        pipeline.print_summary()


if __name__ == "__main__":
    main()
