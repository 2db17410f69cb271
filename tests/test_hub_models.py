"""Hub ids as model paths (model_patches/loading.py): resolved through the Hugging Face cache, offline.

No network here: each test lays out a hub cache (``models--org--name/refs/main`` + ``snapshots/<hash>/``) holding
a tiny model and its tokenizer, as ``hf download`` leaves it, and resolves with HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from model_patches.loading import load_causal_lm, load_tokenizer, model_source, resolve_model
from neurorit.errors import UserError
from tests.support.hub import hub_snapshot

REPO = "tiny-org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(cache, tiny_model, word_tokenizer, commit: str, seed: int, ref: str | None = "main") -> str:
    tok = word_tokenizer(["alpha", "beta"])
    return hub_snapshot(str(cache), REPO, commit, tiny_model("llama", seed=seed, tokenizer=tok), tok, ref)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_model, word_tokenizer):
    """An offline hub cache with REPO at COMMIT (refs/main) and OTHER (no ref), as the process's cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    _snapshot(cache, tiny_model, word_tokenizer, COMMIT, seed=1)
    _snapshot(cache, tiny_model, word_tokenizer, OTHER, seed=2, ref=None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _weights(model) -> torch.Tensor:
    return model.model.layers[0].mlp.down_proj.weight.detach().clone()


def test_hub_id_resolves_to_the_cached_snapshot(hub_cache, tiny_model, word_tokenizer):
    source = resolve_model(REPO)
    assert source.repo_id == REPO and source.revision == COMMIT
    assert os.path.samefile(source.path, hub_cache / f"models--tiny-org--tiny-llama/snapshots/{COMMIT}")
    model = load_causal_lm(REPO, device="cpu")
    assert torch.equal(_weights(model), _weights(tiny_model("llama", seed=1, tokenizer=word_tokenizer(["alpha", "beta"]))))
    assert load_tokenizer(REPO).convert_tokens_to_ids("alpha") == word_tokenizer(["alpha", "beta"]).convert_tokens_to_ids("alpha")


def test_a_pinned_revision_is_taken(hub_cache):
    pinned = resolve_model(f"{REPO}@{OTHER}")
    assert pinned.revision == OTHER and pinned.repo_id == REPO
    assert not torch.equal(_weights(load_causal_lm(f"{REPO}@{OTHER}", device="cpu")),
                           _weights(load_causal_lm(REPO, device="cpu")))


def test_model_source_for_fingerprints(hub_cache, tmp_path, tiny_model):
    assert model_source(REPO) == {"model": REPO, "revision": COMMIT, "path": resolve_model(REPO).path}
    local = tmp_path / "local"
    tiny_model("llama").save_pretrained(local)
    assert model_source(str(local)) == {"model": str(local), "revision": None, "path": str(local)}
    # a snapshot folder given by path still knows its commit
    assert model_source(resolve_model(REPO).path)["revision"] == COMMIT


@pytest.mark.parametrize("name", ["nobody/unknown-model", "unknown-model", f"{REPO}@main-does-not-exist"])
def test_unknown_id_offline_is_one_line(hub_cache, name):
    with pytest.raises(UserError) as err:
        load_causal_lm(name, device="cpu")
    message = str(err.value)
    assert "\n" not in message and name.split("@")[0] in message and "HF_HUB_OFFLINE" in message


@pytest.mark.parametrize("path", ["/no/such/folder", "./no-such-folder", "a/b/c"])
def test_a_missing_local_path_is_not_looked_up(hub_cache, path):
    with pytest.raises(UserError, match="does not exist or is not a folder"):
        resolve_model(path)


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_causal_lm(str(tmp_path), device="cpu")


def test_the_environment_alone_makes_it_offline(tmp_path, tiny_model, word_tokenizer):
    """A fresh process with HF_HUB_OFFLINE=1 and HF_HUB_CACHE set (as a SLURM job would run) reads the cache."""
    cache = tmp_path / "hub"
    _snapshot(cache, tiny_model, word_tokenizer, COMMIT, seed=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    code = ("import json; from model_patches.loading import model_source; "
            f"print(json.dumps(model_source({REPO!r})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["revision"] == COMMIT and got["path"].startswith(str(cache))
