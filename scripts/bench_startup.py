"""Start-up time of every entry point: ``--help`` and a refused bad value, against ``import torch`` in the same run.

    .venv/bin/python scripts/bench_startup.py [--repeats 3]

An entry point has to import torch before it can do anything, so ``import torch`` is the floor and the reference:
the table prints each command's median seconds and its ratio to that floor (this machine is noisy; ratios from one
run are what to compare). ``--help`` should stay near the floor; a refused value (``--runtime.seed x``) too, since
a user's typo must not wait for transformers or DeepSpeed to import.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = {
    "mine": "attribution/mine.py",
    "diagnose": "attribution/diagnose.py",
    "stage1": "train/stage1.py",
    "stage2": "train/stage2.py",
    "evaluate": "rag/evaluate.py",
    "report": "rag/report.py",
    "write_evidence": "rag/write_evidence.py",
}


def timed(argv: list[str], repeats: int) -> float:
    """Median wall seconds of ``argv`` run from the repository root (its exit status is not checked: a refusal
    exits 2 on purpose)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per command; the median is reported")
    args = parser.parse_args()
    python = sys.executable
    floor = timed([python, "-c", "import torch"], args.repeats)
    print(f"{'command':<34} {'seconds':>8} {'x import torch':>15}")
    print(f"{'import torch':<34} {floor:8.2f} {1.0:15.2f}")
    for name, script in ENTRY_POINTS.items():
        for label, extra in (("--help", ["--help"]), ("bad value", ["--config", "configs/embedded.yaml",
                                                                       "--runtime.seed", "x"])):
            seconds = timed([python, script, *extra], args.repeats)
            print(f"{name + ' ' + label:<34} {seconds:8.2f} {seconds / floor:15.2f}")


if __name__ == "__main__":
    main()
