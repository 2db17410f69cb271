"""Run a script as a CPU rank even where GPUs are visible: ``python tests/support/cpu_rank.py script.py args...``.

Launchers give each rank a GPU (the ``deepspeed`` launcher sets ``CUDA_VISIBLE_DEVICES`` per rank), and NCCL
refuses two ranks on one GPU. On a machine with fewer GPUs than a test's ranks, ``tests.support.ranks`` starts each
rank through this file: it hides the GPUs and selects DeepSpeed's CPU accelerator before anything imports torch,
then runs the script as ``__main__`` with its own arguments, as ``python script.py args...`` would (the ranks then
use gloo on CPU, as on a machine without GPUs). A ``--local_rank=N`` the deepspeed launcher put before the script
is handed on to it.
"""
import os
import runpy
import sys

if __name__ == "__main__":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["DS_ACCELERATOR"] = "cpu"
    args = sys.argv[1:]
    launcher_args = []  # the deepspeed launcher puts --local_rank=N before the script: hand it on after it
    while args and args[0].startswith(("--local_rank", "--local-rank")):
        launcher_args.append(args.pop(0))
    script = args[0]
    sys.argv = [script, *launcher_args, *args[1:]]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")
