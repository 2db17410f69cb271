"""Shared pytest setup and fixtures: one torch thread per test process (the CI machine has 2 cores), no tokenizer
threads; the plumbing of ``tests/support`` as fixtures.

- ``free_port``: a free TCP port on 127.0.0.1.
- ``run_ranks(script, *args, n=2, launcher="deepspeed", env=None, timeout=300, check=True)``: N real ranks of a
  script under the deepspeed (or torchrun) launcher; the finished process, asserted to have exited 0 under ``check``.
- ``single_rank_env``: the environment a launcher sets for a world of one (DeepSpeed wants a process group).
- ``tiny_model(family, seed=0, ...)``: a tiny random causal LM of any family in ``TINY_FAMILIES``.
- ``word_tokenizer(words, texts=())``: a closed word-level tokenizer.
"""
import os

import pytest
import torch

from tests.support import models, ranks

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


@pytest.fixture
def free_port() -> int:
    return ranks.free_port()


@pytest.fixture(scope="session")
def run_ranks():
    return ranks.run_ranks


@pytest.fixture
def single_rank_env(monkeypatch) -> None:
    ranks.single_rank_env(monkeypatch)


@pytest.fixture(scope="session")
def tiny_model():
    return models.tiny_model


@pytest.fixture(scope="session")
def word_tokenizer():
    return models.word_tokenizer
