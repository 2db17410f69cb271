"""The vllm backend starts vLLM before any process group or CUDA context exists (issue 20, item 9).

Runs without vLLM: a stand-in ``vllm`` module records, when its engine is built, whether this process has a
torch.distributed group and whether it asked for a CUDA device. The path is the one an entry takes:
``init_process(backend)`` then ``load_backend``. The real engine is tested in its own environment (tests/vllm).
"""
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch
import torch.distributed as tdist

from neurorit import dist
from neurorit.config import RuntimeConfig
from neurorit.errors import UserError
from rag import backends
from tests.support.models import tiny_config

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


@pytest.fixture
def no_cuda_device(monkeypatch):
    """Calls that would create a CUDA context fail the test."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a CUDA device was selected before vLLM started")

    monkeypatch.setattr(torch.cuda, "set_device", refuse)
    monkeypatch.setattr(torch.cuda, "init", refuse)


def test_vllm_starts_before_any_group_or_cuda_context(fake_vllm, no_cuda_device, monkeypatch, tmp_path):
    assert not tdist.is_initialized()
    joined = []
    monkeypatch.setattr(dist, "init_distributed", lambda *a, **k: joined.append(a))
    tiny_config("llama").save_pretrained(tmp_path)
    backends.init_process("vllm", RuntimeConfig())
    backend = backends.load_backend("vllm", str(tmp_path), CFG, max_model_len=64)
    assert isinstance(backend, backends.VLLMBackend)
    assert fake_vllm["group"] is False and fake_vllm["cuda"] is False and joined == []
    assert fake_vllm["kwargs"]["model"] == str(tmp_path) and fake_vllm["kwargs"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("backend", ["hf", "zero3"])
def test_the_other_backends_join_the_group(backend, monkeypatch):
    joined = []
    monkeypatch.setattr(dist, "init_distributed", lambda local_rank=None: joined.append(local_rank))
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
