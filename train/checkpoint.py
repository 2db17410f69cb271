"""DeepSpeed checkpoints for resume: ``<stage output>/checkpoints/step<N>/`` plus DeepSpeed's ``latest`` file.

Client state: step, consumed samples, every rank's RNG states (python, torch, CUDA) and the neuron-map hash.
Frozen parameters are left out (they are the stage's ``init_from`` weights, loaded again on resume), so a
neuron-level checkpoint of a 70B model holds only the deltas, the trainable FFNs and their optimizer state.
Rank 0 also writes ``trainer_state.json`` (the same minus RNG) inside the tag folder, so that a checkpoint taken
with another neuron map (or method) is refused with a ``UserError`` *before* DeepSpeed tries to load tensors of
other shapes.
"""
from __future__ import annotations

import json
import os
import random
from typing import Optional

import torch

from neurorit import dist
from neurorit.dist import TrainEngine
from neurorit.errors import UserError
from neurorit.files import atomic_write_text

STATE_FILE = "trainer_state.json"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine: TrainEngine, ckpt_dir: str, step: int, consumed: int, identity: dict) -> None:
    """Collective: every rank calls it. ``identity`` = what a resume must match (neuron-map hash, method)."""
    tag = f"step{step}"
    rngs = dist.all_gather_objects(_rng_state())
    state = {"step": step, "consumed_samples": consumed, **identity}
    if dist.is_main():  # before save_checkpoint, which writes `latest`: a kill in between must not strand resume
        os.makedirs(os.path.join(ckpt_dir, tag), exist_ok=True)
        path = os.path.join(ckpt_dir, tag, STATE_FILE)
        atomic_write_text(path, json.dumps(state, indent=1))
    dist.barrier()
    engine.save(ckpt_dir, tag, {**state, "rng": rngs})
    dist.barrier()


def find(ckpt_dir: str, resume: str) -> Optional[str]:
    """The checkpoint tag folder to resume from: ``auto`` = the latest under ``ckpt_dir`` (None if there is
    none), ``never`` = None, else a path to a tag folder."""
    if resume == "never":
        return None
    if resume == "auto":
        latest = os.path.join(ckpt_dir, "latest")
        if not os.path.isfile(latest):
            return None
        with open(latest) as fh:
            return os.path.join(ckpt_dir, fh.read().strip())
    if not os.path.isfile(os.path.join(resume, STATE_FILE)):
        raise UserError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE}); use auto, never or a "
                        f"folder like <stage output>/checkpoints/step<N>")
    return resume


def load(engine: TrainEngine, tag_dir: str, identity: dict) -> dict:
    """Check ``identity`` against the checkpoint, load it into ``engine``, restore this rank's RNG; returns the
    client state (step, consumed_samples, ...)."""
    with open(os.path.join(tag_dir, STATE_FILE)) as fh:
        saved = json.load(fh)
    for key, value in identity.items():
        if saved.get(key) != value:
            raise UserError(f"checkpoint {tag_dir} was taken with {key} = {saved.get(key)!r}, this run has "
                            f"{value!r}; use the matching neuron map / method, another output_dir, or --resume never")
    client = engine.load(os.path.dirname(tag_dir), os.path.basename(tag_dir))  # frozen weights: from init_from
    if client is None:
        raise UserError(f"DeepSpeed could not load checkpoint {tag_dir}")
    _set_rng_state(client["rng"][dist.rank()])
    return client
