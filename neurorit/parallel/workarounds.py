"""DeepSpeed's start-up hazards on a shared machine, each worked around where it starts: one extension folder per
environment, a silent first build of its CPU all-reduce op, a stale build lock left by a killed process, and the
/dev/shm all-reduce buffer DeepSpeed never unlinks (docs/DESIGN.md §5)."""
from __future__ import annotations

import contextlib
import datetime
import os
import sys

import torch.distributed as tdist

# DeepSpeed compiles its small C++ ops on first use into TORCH_EXTENSIONS_DIR; one folder per environment, so two
# venvs (the main one, .venv-vllm, a second clone) never rebuild or load each other's half-written libraries.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))

STALE_LOCK_SECONDS = 600


def shm_op_build_pending() -> bool:
    """Whether starting DeepSpeed's process group here will JIT-compile its shared-memory all-reduce op: the same
    conditions as DeepSpeed's ``build_shm_op`` and ``OpBuilder.load`` (a builder for this accelerator, compatible,
    not installed prebuilt), and no library yet in this environment's extension folder."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return False
    if installed_ops.get(builder.NAME, False):
        return False
    return not os.path.exists(os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], builder.NAME, f"{builder.NAME}.so"))


def announce_op_build(local_rank: int) -> None:
    """On CPU, DeepSpeed's process group compiles its shared-memory all-reduce op the first time an environment
    starts one (about two minutes on 2 cores) and prints nothing until it is done. Say so before it starts, once per
    node (local rank 0; the other ranks wait on DeepSpeed's build lock)."""
    if local_rank == 0 and shm_op_build_pending():
        print(f"building DeepSpeed's CPU all-reduce op once into {os.environ['TORCH_EXTENSIONS_DIR']} (1-3 minutes; "
              f"later starts in this environment reuse it)", file=sys.stderr, flush=True)


def clear_stale_build_lock() -> None:
    """DeepSpeed loads a small C++ op at start-up under a lock file that has no owner and no timeout: a process
    killed while holding it leaves every later start on this machine waiting forever. A build takes about a
    minute, so a lock older than ten minutes is a dead process's; remove it, and say so."""
    root = os.environ["TORCH_EXTENSIONS_DIR"]
    if not os.path.isdir(root):
        return
    for folder in os.listdir(root):
        lock = os.path.join(root, folder, "lock")
        try:
            age = datetime.datetime.now().timestamp() - os.path.getmtime(lock)
        except OSError:
            continue
        if age > STALE_LOCK_SECONDS:
            print(f"warning: removing the stale build lock {lock} ({age / 60:.0f} min old; a killed process left it)",
                  file=sys.stderr)
            with contextlib.suppress(OSError):
                os.remove(lock)


SHM_DIR = "/dev/shm"


def unlink_shm_buffer() -> None:
    """DeepSpeed's CPU all-reduce (``deepspeed_shm_comm``) gives every rank of a one-host group a 67 MB POSIX
    shared-memory buffer, ``deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``, and never
    unlinks it: each run leaves world-size buffers in /dev/shm (RAM) until reboot (measured: 19 GB after a day of
    tests, and then an out-of-memory kill). Every rank maps every peer's buffer before its init returns, so after a
    barrier the names are no longer needed: unlink this rank's. The mappings stay valid until the process exits,
    and the kernel frees the memory then, also after a kill -9."""
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{tdist.get_rank()}")
    if tdist.get_world_size() > 1:
        tdist.barrier()
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(SHM_DIR, name))


