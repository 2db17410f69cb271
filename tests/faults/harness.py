"""Plumbing of the fault matrix: start a real 2-rank launch (or the demo), ``kill -9`` one of its ranks at a seeded
random point, wait for the launcher to give up; then the checks every test shares (no half-written file that a
later stage would accept, byte-identical outputs).

The random point: a seeded ``random.Random`` (``NEURORIT_FAULT_SEED``, default 0; every test prints what it drew)
chooses which rank dies, after which progress marker (the k-th shard, the k-th checkpoint, the k-th finished
evaluation batch, a demo step) and after what extra delay. A marker is polled every 10 ms, so the kill lands
wherever the rank is at that moment: inside a forward, a save, a collective or a write.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import psutil

from model_patches.model_card import read_model_card
from tests.support.ranks import ROOT, child_env, launch_command

SEED = int(os.environ.get("NEURORIT_FAULT_SEED", "0"))
# DeepSpeed's comm init JIT-loads its shm op under torch's FileBaton, a lock *file* with no owner and no timeout:
# a rank killed while holding it leaves every later DeepSpeed start on the machine sleeping forever. Kills wait
# until it is free (it is held for milliseconds once the op is built) and a launch that left it behind removes it.
JIT_LOCK = os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/torch_extensions")),
                        f"py{sys.version_info.major}{sys.version_info.minor}_cpu", "deepspeed_shm_comm", "lock")
DS_READY = "deepspeed_shm_comm_op built successfully"  # printed by each rank once past that lock


def rng(name: str) -> random.Random:
    """The seeded stream of one test (seed and test name), so tests do not shift each other's draws."""
    return random.Random(f"{SEED}:{name}")


@dataclass
class Killed:
    returncode: int
    killed: bool          # a rank was SIGKILLed before the launch ended on its own
    when: str             # what the kill waited for
    output: str           # stdout + stderr of the launch


def rank_pids(root_pid: int, rank: Optional[int] = None) -> list[int]:
    """Descendants of ``root_pid`` that are distributed ranks (``RANK`` in their environment), optionally only
    those of ``rank``."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            env = child.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "RANK" in env and "LOCAL_RANK" in env and (rank is None or env["RANK"] == str(rank)):
            found.append(child.pid)
    return found


def start(cmd: list[str], env: Optional[dict], log: str) -> subprocess.Popen:
    fh = open(log, "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=child_env(env), stdout=fh, stderr=subprocess.STDOUT,
                            start_new_session=True)


def launch(script: str, *args: str, env: Optional[dict] = None, log: str, n: int = 2) -> subprocess.Popen:
    """``n`` ranks of ``script`` under torchrun (it starts faster than the deepspeed launcher; same code path)."""
    return start(launch_command(script, [str(a) for a in args], n, "torchrun"), env, log)


def kill_rank_when(proc: subprocess.Popen, log: str, ready: Callable[[], bool], rank: int, delay: float,
                   when: str, timeout: float = 900) -> Killed:
    """Wait until ``ready()`` (polled every 10 ms), sleep ``delay`` s, SIGKILL rank ``rank`` (of any launch below
    ``proc``); then wait for ``proc`` to end (the launcher tears the other rank down)."""
    deadline = time.time() + timeout
    killed = False
    while proc.poll() is None and time.time() < deadline:
        if ready():
            time.sleep(delay)
            _wait_jit_lock()
            pids = rank_pids(proc.pid, rank)
            if pids:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    killed = True
                break
        time.sleep(0.01)
    return _wait(proc, log, killed, when, deadline)


def _wait_jit_lock(limit: float = 10.0) -> None:
    end = time.time() + limit
    while os.path.exists(JIT_LOCK) and time.time() < end:
        time.sleep(0.01)


def clear_stale_jit_lock() -> None:
    """Remove the JIT lock if it stays for 10 s (a live holder keeps it for milliseconds once the op is built)."""
    if os.path.exists(JIT_LOCK):
        _wait_jit_lock(10.0)
        if os.path.exists(JIT_LOCK):
            print(f"removing a stale {JIT_LOCK} (a rank was killed while holding it)")
            try:
                os.remove(JIT_LOCK)
            except FileNotFoundError:
                pass


def ranks_ready(log: str, n: int = 2, before: int = 0) -> bool:
    """Have ``n`` more ranks than ``before`` printed that they are past DeepSpeed's comm init?"""
    with open(log, errors="replace") as fh:
        return fh.read().count(DS_READY) >= before + n


def _wait(proc: subprocess.Popen, log: str, killed: bool, when: str, deadline: float) -> Killed:
    try:
        proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"launch did not end after the kill ({when}):\n" + open(log).read()[-4000:])
    if killed:
        clear_stale_jit_lock()
    return Killed(proc.returncode, killed, when, open(log).read())


def error_lines(output: str, prefix: str = "error: ") -> list[str]:
    """Each ``error: ...`` line of a launch's output, also where two ranks' lines ended up on one line of the log
    (a process whose stderr is not ours may write the message and its newline apart)."""
    return [prefix + part.split("\n")[0] for part in output.split(prefix)[1:]]


def run(script: str, *args: str, env: Optional[dict] = None, log: str, timeout: float = 900) -> str:
    """An uninterrupted 2-rank launch that must exit 0; its output."""
    proc = launch(script, *args, env=env, log=log)
    result = _wait(proc, log, False, "no kill", time.time() + timeout)
    assert result.returncode == 0, result.output[-4000:]
    return result.output


def run_py(args: list[str], log: str, timeout: float = 1800, env: Optional[dict] = None) -> Killed:
    proc = start([sys.executable, *args], env, log)
    return _wait(proc, log, False, "no kill", time.time() + timeout)


# ---------------------------------------------------------------------------------------------------- checks
def files_under(folder: str) -> dict:
    """{relative path: bytes} of every file under ``folder``."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = fh.read()
    return out


def assert_same_files(a: str, b: str, names=None) -> None:
    fa, fb = files_under(a), files_under(b)
    if names is not None:
        fa = {k: v for k, v in fa.items() if k in names}
        fb = {k: v for k, v in fb.items() if k in names}
        assert set(fa) == set(names), (a, sorted(fa))
    assert sorted(fa) == sorted(fb), (sorted(fa), sorted(fb))
    differ = [k for k in fa if fa[k] != fb[k] and os.path.basename(k) not in BY_CONTENT + (CARD,)]
    for k in fa:
        if os.path.basename(k) in BY_CONTENT:
            assert_same_safetensors(os.path.join(a, k), os.path.join(b, k))
        elif os.path.basename(k) == CARD:  # the model card records the command, which names each run's folder
            card_a, card_b = (read_model_card(os.path.dirname(os.path.join(x, k))) for x in (a, b))
            assert {**card_a, "command": ""} == {**card_b, "command": ""}, (card_a, card_b)
    assert not differ, f"files differ between {a} and {b}: {differ}"


def assert_loadable_or_absent_export(folder: str) -> None:
    """A folder named like an export is either absent or a complete checkpoint that loads."""
    if not os.path.exists(folder):
        return
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder)


def assert_safetensors_whole(folder: str) -> None:
    """Every ``*.safetensors`` under ``folder`` (temp files excluded: nothing reads them) opens and reads."""
    from safetensors.torch import load_file

    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".safetensors") and not name.startswith("."):
                load_file(os.path.join(root, name))


def assert_jsonl_whole(path: str) -> int:
    """``path`` is absent or complete JSONL (every line parses, the file ends with a newline); its line count."""
    if not os.path.exists(path):
        return 0
    text = open(path, encoding="utf-8").read()
    assert text == "" or text.endswith("\n"), f"{path} is cut mid-line"
    for i, line in enumerate(text.splitlines(), 1):
        json.loads(line), f"{path}:{i}"
    return len(text.splitlines())


def assert_checkpoints_resumable(ckpt_dir: str) -> Optional[str]:
    """What ``--resume auto`` would take is accepted (no damaged file behind ``latest``); returns it."""
    from train import checkpoint

    found = checkpoint.find(ckpt_dir, "auto")
    return found


def training_workspace(root: str, n_train: int = 16, **stage: object) -> str:
    """``tests.support.workspaces.training_workspace`` with any stage field overridden (its own
    ``stage_overrides`` cannot override the fields it sets itself, e.g. ``max_steps``); the YAML path."""
    import yaml

    from tests.support.workspaces import training_workspace as write

    path = write(root, n_train=n_train)
    with open(path) as fh:
        cfg = yaml.safe_load(fh)
    for name in ("stage1", "stage2"):
        cfg[name].update(stage)
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return path


# safetensors writes its metadata from a Rust HashMap: with more than one key the order (so the bytes) changes
# from process to process. Files with several metadata keys (the neuron map) are compared by content.
BY_CONTENT = ("neuron_map.safetensors",)
CARD = "README.md"  # an export's model card (model_patches/model_card.py): compared by its facts


def assert_same_safetensors(a: str, b: str) -> None:
    import torch
    from safetensors import safe_open

    with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
        assert fa.metadata() == fb.metadata(), (a, b)
        assert sorted(fa.keys()) == sorted(fb.keys()), (a, b)
        for key in fa.keys():
            assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), (a, b, key)


def assert_same_file(a: str, b: str) -> None:
    """Byte-identical, or for ``BY_CONTENT`` files the same tensors and metadata."""
    if os.path.basename(a) in BY_CONTENT:
        assert_same_safetensors(a, b)
        return
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read(), f"{b} differs from {a}"
