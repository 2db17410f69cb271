"""The vllm backend starts vLLM before any process group or CUDA context exists (issue 20, item 9).

Runs without vLLM: a stand-in ``vllm`` module records, when its engine is built, whether this process has a
torch.distributed group and whether it asked for a CUDA device. The path is the one an entry takes:
``init_process(backend)`` then ``load_backend``. The real engine is tested in its own environment (tests/vllm).
"""
import json
import subprocess
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch
import torch.distributed as tdist

from neurorit import parallel
from neurorit.config import RuntimeConfig
from neurorit.errors import UserError
from rag import backends
from tests.support.models import tiny_config
from tests.support.ranks import ROOT, child_env

CFG = SimpleNamespace(model=SimpleNamespace(dtype="bfloat16"), eval=SimpleNamespace(tensor_parallel_size=1),
                      runtime=SimpleNamespace(seed=0))


@pytest.fixture
def fake_vllm(monkeypatch):
    """A ``vllm`` module whose ``LLM`` records what the process held when it was built."""
    seen = {}

    class LLM:
        def __init__(self, **kwargs):
            seen.update(kwargs=kwargs, group=tdist.is_initialized(), cuda=torch.cuda.is_initialized())

    module = ModuleType("vllm")
    module.LLM, module.__version__ = LLM, "stand-in"
    monkeypatch.setitem(sys.modules, "vllm", module)
    for key in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    return seen


FRESH_PROCESS = """
import json, sys, types
import torch, torch.distributed as tdist
from tests.test_vllm_order import CFG
from neurorit.config import RuntimeConfig
from rag import backends
seen = {}
class LLM:
    def __init__(self, **kwargs):
        seen.update(model=kwargs["model"], dtype=kwargs["dtype"], group=tdist.is_initialized(),
                    cuda=torch.cuda.is_initialized())
module = types.ModuleType("vllm"); module.LLM, module.__version__ = LLM, "stand-in"
sys.modules["vllm"] = module
def refusing(name):
    def refuse(*a, **k):
        raise AssertionError(f"torch.cuda.{name} was called before vLLM started")
    return refuse
torch.cuda.set_device, torch.cuda.init = refusing("set_device"), refusing("init")  # distinct: torch._dynamo maps them
backends.init_process("vllm", RuntimeConfig())
backend = backends.load_backend("vllm", sys.argv[1], CFG, max_model_len=64)
print(json.dumps(dict(seen, backend=type(backend).__name__)))
"""


def test_vllm_starts_before_any_group_or_cuda_context(tmp_path):
    """In a fresh process (this one may hold the group of an earlier test), as an entry runs it."""
    tiny_config("llama").save_pretrained(tmp_path)
    env = {k: v for k, v in child_env().items() if k not in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "RANK",
                                                              "LOCAL_RANK")}
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == {"model": str(tmp_path), "dtype": "bfloat16", "group": False, "cuda": False,
                    "backend": "VLLMBackend"}


@pytest.mark.parametrize("backend", ["hf", "zero3"])
def test_the_other_backends_join_the_group(backend, monkeypatch):
    joined = []
    monkeypatch.setattr(parallel, "init_distributed", lambda local_rank=None: joined.append(local_rank))
    backends.init_process(backend, RuntimeConfig(), 3)
    assert joined == [3]


@pytest.mark.parametrize("key", ["WORLD_SIZE", "SLURM_STEP_NUM_TASKS"])
def test_vllm_under_a_launcher_of_several_ranks_is_refused_in_one_line(key, fake_vllm, monkeypatch, tmp_path):
    monkeypatch.setenv(key, "2")
    with pytest.raises(UserError, match="runs in one process.*2 ranks"):
        backends.init_process("vllm", RuntimeConfig())
    tiny_config("llama").save_pretrained(tmp_path)
    with pytest.raises(UserError, match="runs in one process"):
        backends.load_backend("vllm", str(tmp_path), CFG)
    assert "kwargs" not in fake_vllm
