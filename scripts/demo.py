"""The whole Neuro-RIT pipeline on the embedded default, on CPU, end to end.

    python scripts/demo.py --config configs/embedded.yaml [--quick] [--ranks 2]      (what `make demo` runs)

Steps (each skipped when its output already exists, so a re-run continues where it stopped):
benchmark -> base model (the committed one; trained only if missing) -> mine (ZeRO-3 over ``--ranks`` ranks, launched with torchrun)
-> stage 1 -> stage 2 -> baselines (robust SFT, layer-level tuning, random neurons) -> evaluation of every
method with the two-step instruction -> results.json, results.md and the chart in ``runtime.output_dir``; then
the same with the answer-only instruction -> ``<output_dir>/answer_only/``. Every method starts from the same
base model with the same step budget (``stage1.max_steps`` / ``stage2.max_steps``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from neurorit.config import load_config
from neurorit.errors import UserError, main_guard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

# Quick variant: smaller budgets and no trained baselines (a first look within about five minutes).
QUICK = ["--mining.num_examples", "24", "--stage1.max_steps", "30", "--stage2.max_steps", "30",
         "--eval.num_examples", "100", "--runtime.output_dir", "outputs/demo-quick"]


def launch(ranks: int, script: str, args: list[str]) -> list[str]:
    """``torchrun`` for several ranks (it starts faster than the deepspeed launcher; the code is launcher-agnostic)."""
    if ranks > 1:
        exe = shutil.which("torchrun", path=os.path.dirname(PY)) or "torchrun"
        return [exe, "--nproc_per_node", str(ranks), "--master_port", str(29500 + os.getpid() % 1000), script, *args]
    return [PY, script, *args]


class Pipeline:
    def __init__(self, config: str, overrides: list[str], ranks: int, baselines: bool = True):
        self.config, self.overrides, self.ranks, self.baselines = config, overrides, ranks, baselines
        # the two-step instruction is the headline; the full run also scores every method answer-only
        self.instructions = ("two_step", "answer_only") if baselines else ("two_step",)
        self.cfg = load_config(config, overrides)
        self.out = self.cfg.runtime.output_dir
        self.timings: list[tuple[str, float, str]] = []

    def args(self, *extra: str) -> list[str]:
        return ["--config", self.config, *self.overrides, *extra]

    def step(self, name: str, done_marker: str, cmd: list[str]) -> None:
        if done_marker and os.path.exists(done_marker):
            self.timings.append((name, 0.0, "already done"))
            print(f"== {name}: already done ({done_marker})", flush=True)
            return
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        res = subprocess.run(cmd, cwd=ROOT, env=env)
        if res.returncode != 0:
            raise UserError(f"step '{name}' failed (exit {res.returncode}); fix the cause and re-run: finished "
                            f"steps are kept")
        self.timings.append((name, time.time() - t0, done_marker))

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def train(self, name: str, stage: str, method: str, init_from: str = "") -> str:
        out = self.path(name)
        extra = [f"--{stage}.method", method, f"--{stage}.output_dir", out]
        if init_from:
            extra += [f"--{stage}.init_from", init_from]
        self.step(f"train {name}", os.path.join(out, "train_summary.json"),
                  launch(self.ranks, f"train/{stage}.py", self.args(*extra)))
        return os.path.join(out, "export")

    def evaluate(self, name: str, model: str, trainable: int, extra: tuple[str, ...], instruction: str) -> None:
        folder = self.eval_folder(instruction)
        cmd = launch(self.ranks, "rag/evaluate.py",
                     self.args("--model", model, "--name", name, "--trainable-params", str(trainable),
                               "--eval.instruction", instruction, "--eval.output_dir", folder, *extra))
        self.step(f"evaluate {name} ({instruction})", os.path.join(folder, f"{name}.eval.json"), cmd)

    def eval_folder(self, instruction: str) -> str:
        return self.path("eval" if instruction == "two_step" else f"eval_{instruction}")

    def results_folder(self, instruction: str) -> str:
        return self.out if instruction == "two_step" else self.path(instruction)

    def run(self) -> None:
        cfg = self.cfg
        self.step("benchmark", cfg.data.test_file, [PY, "-m", "benchmarks.embedded.benchmark", *self.args()])
        self.step("base model", os.path.join(cfg.model.path, "training_history.json"),
                  [PY, "scripts/train_base_model.py", "--config", self.config, "--out", cfg.model.path])
        mining = self.path("mining")
        self.step("mine", os.path.join(mining, "summary.txt"), launch(self.ranks, "attribution/mine.py", self.args()))
        print(open(os.path.join(mining, "summary.txt")).read(), flush=True)

        base = cfg.model.path
        s1 = self.train("stage1", "stage1", "neurorit")
        s2 = self.train("stage2", "stage2", "neurorit", init_from=s1)
        if self.baselines:
            rnd1 = self.train("random_stage1", "stage1", "random")
            rnd2 = self.train("random_neurons", "stage2", "random", init_from=rnd1)
            layer = self.train("layer_tuning", "stage2", "layer", init_from=base)
            sft = self.train("robust_sft", "stage2", "robust_sft", init_from=base)

        def trainable(*dirs: str) -> int:
            return sum(json.load(open(os.path.join(d, "..", "train_summary.json")))["trainable_params"] for d in dirs)

        runs = [("base", base, 0, ()), ("neurorit_stage1", s1, trainable(s1), ()),
                ("neurorit", s2, trainable(s1, s2), ()),
                ("neurorit_hard_deactivation", base, 0, ("--deactivate-map", mining))]
        if self.baselines:
            runs += [("random_neurons", rnd2, trainable(rnd1, rnd2), ()), ("layer_tuning", layer, trainable(layer), ()),
                     ("robust_sft", sft, trainable(sft), ())]
        for instruction in self.instructions:
            for name, model, count, extra in runs:
                self.evaluate(name, model, count, extra, instruction)
            self.step(f"report ({instruction})", "", [PY, "-m", "rag.report", "--eval-dir", self.eval_folder(instruction),
                                                      "--out", self.results_folder(instruction)])
        self.print_summary()

    def print_summary(self) -> None:
        print("\n== timings")
        for name, secs, note in self.timings:
            print(f"  {name:<48} {secs / 60:6.1f} min" + ("  (skipped: already done)" if note == "already done" else ""))
        print(f"  {'total':<48} {sum(t for _, t, _ in self.timings) / 60:6.1f} min")
        print(f"\nresults: {self.path('results.md')}, {self.path('results.json')}, {self.path('results.png')}")
        if len(self.instructions) > 1:
            print(f"answer-only instruction: {self.path('answer_only', 'results.md')}")
        print(f"neuron map: {self.path('mining', 'summary.txt')} and {self.path('mining', 'neuron_map.png')}")
        print(f"TensorBoard: .venv/bin/tensorboard --logdir {self.out}")
        md = self.path("results.md")
        if os.path.exists(md):
            print("\n" + open(md).read())


@main_guard
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/embedded.yaml")
    p.add_argument("--quick", action="store_true",
                   help="smaller budgets and no trained baselines: a first look within ~5 minutes")
    p.add_argument("--ranks", type=int, default=2, help="processes per distributed step (ZeRO-3 over gloo on CPU)")
    args, rest = p.parse_known_args(argv)
    overrides = (QUICK if args.quick else []) + rest
    Pipeline(args.config, overrides, args.ranks, baselines=not args.quick).run()


if __name__ == "__main__":
    main()
