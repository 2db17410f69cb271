"""Real ranks for the distributed tests (CPU/gloo): a free port, N ranks of a script under a launcher, a world of one.

``run_ranks("attribution/mine.py", "--config", cfg)`` starts ``deepspeed --num_gpus 2`` (or ``torchrun
--nproc_per_node 2`` with ``launcher="torchrun"``, which starts ~30 s faster here) in the repository root, with one
torch thread per rank and the root on ``PYTHONPATH`` (so launched scripts import ``tests.support``), and asserts
that it exited 0 unless ``check=False``.

On a machine with GPUs but fewer than the ranks asked for (one H200: NCCL refuses two ranks on one device), each
rank starts through ``tests/support/cpu_rank.py``, which hides the GPUs and selects DeepSpeed's CPU accelerator, so
the ranks run on CPU with gloo exactly as on a machine without GPUs (``cpu=True`` forces that, ``cpu=False``
forbids it). Where there is no GPU, or enough of them, the command is the same as it always was.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEEPSPEED = os.path.join(os.path.dirname(sys.executable), "deepspeed")
CPU_RANK = os.path.join(ROOT, "tests", "support", "cpu_rank.py")


def needs_cpu_ranks(n: int) -> bool:
    """True where GPUs are visible but fewer than ``n`` (the ranks must then run on CPU)."""
    import torch

    return 0 < torch.cuda.device_count() < n


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: dict | None = None) -> dict:
    """This process's environment for a child: one thread, no tokenizer threads, the repository root importable."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=path)
    env.update(extra or {})
    return env


def launch_command(script: str, args, n: int = 2, launcher: str = "deepspeed", cpu: bool | None = None) -> list[str]:
    """The command that starts ``n`` ranks of ``script``; through ``cpu_rank.py`` when ``cpu`` (default: when
    ``needs_cpu_ranks(n)``)."""
    port = str(free_port())
    if needs_cpu_ranks(n) if cpu is None else cpu:
        script, args = CPU_RANK, [script, *args]
    if launcher == "deepspeed":
        return [DEEPSPEED, "--num_gpus", str(n), "--master_port", port, script, *args]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
                "--master_addr", "127.0.0.1", "--master_port", port, script, *args]
    raise ValueError(f"unknown launcher {launcher!r}; choose deepspeed or torchrun")


def run_ranks(script: str, *args: str, n: int = 2, launcher: str = "deepspeed", env: dict | None = None,
              timeout: int = 300, check: bool = True, cpu: bool | None = None) -> subprocess.CompletedProcess:
    """``n`` ranks of ``script`` (a path, relative to the repository root or absolute) with ``args``; the finished
    process with its captured ``stdout``/``stderr``. With ``check``, a non-zero exit fails the test with both tails.
    ``cpu``: as in ``launch_command``."""
    proc = subprocess.run(launch_command(script, [str(a) for a in args], n, launcher, cpu), cwd=ROOT,
                          env=child_env(env), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def single_rank_env(monkeypatch) -> None:
    """What a launcher would set for a world of one (DeepSpeed wants a process group), on ``monkeypatch``."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": os.environ.get("MASTER_PORT") or str(free_port())}.items():
        monkeypatch.setenv(key, value)
