"""DeepSpeed checkpoints for resume: ``<stage output>/checkpoints/step<N>/`` plus DeepSpeed's ``latest`` file.

Client state: step, consumed samples, every rank's RNG states (python, torch, CUDA), the world size and the
identity a resume must match (stage, method, neuron-map hash, ``init_from``, ``runtime.seed``).

Another world size. ZeRO shards are per world size, but the data order is not (``train.data.StepPlan`` splits each
global batch over whatever ranks there are). A checkpoint taken on N ranks resumes on M through DeepSpeed's
universal checkpoint: rank 0 converts the tag folder once into ``<tag>/universal/`` (``parallel.to_universal``, written
beside and renamed into place), every rank then loads that with ``TrainEngine.load(..., universal=True)``; rank r
takes the RNG state of old rank ``r mod N``. Measured (tiny Llama, ZeRO-3, CPU; tests/test_resume_other_world.py):
1 rank -> 2 -> 1 gives the losses and export of the uninterrupted run (equal to 1e-5 relative, the test's bound).
Frozen parameters are left out (they are the stage's ``init_from`` weights, loaded again on resume), so a
neuron-level checkpoint of a 70B model holds only the deltas, the trainable FFNs and their optimizer state.
Rank 0 also writes ``trainer_state.json`` (the same minus RNG) inside the tag folder, so that a checkpoint taken
with another neuron map (or method) is refused with a ``UserError`` *before* DeepSpeed tries to load tensors of
other shapes.

Completeness. DeepSpeed's rank 0 writes ``latest`` (not atomically) as soon as its own files are written, while
other ranks may still be writing theirs; a kill in that window would leave ``latest`` naming a checkpoint with a
missing or truncated file. So, after every rank has finished (barrier), rank 0 writes ``manifest.json`` into the
tag folder (every file with its size, as seen by all ranks) and then rewrites ``latest`` atomically. A tag folder
without a manifest is an interrupted save: ``--resume auto`` then takes the newest complete checkpoint (and says
so). A checkpoint that is damaged otherwise (a file of the manifest missing or of another size, an unreadable
``trainer_state.json`` or manifest, ``latest`` naming a folder that is not there) is refused with one line naming
the file. A full disk while saving stops with one line; the checkpoints already written stay as they were.
The checkpoint folder must be shared by the ranks (rank 0 writes the manifest of everyone's files).

Rotation (``stage<N>.keep_last``). After a complete save, rank 0 deletes the complete checkpoints beyond the
newest ``keep_last`` and the interrupted ones older than the newest complete one; never the one just saved, nor
the one this run resumed from. ``keep_last`` must be >= 1 (None keeps every checkpoint).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from typing import Optional, Sequence

import torch

from neurorit import parallel
from neurorit.parallel import TrainEngine
from neurorit.errors import UserError
from neurorit.files import atomic_write_text, disk_full_error, is_disk_full

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
LATEST = "latest"
TAG = re.compile(r"^step(\d+)$")


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


def _listing(tag_dir: str) -> dict:
    """{relative path: size} of every file under ``tag_dir`` this rank sees (the manifest itself excluded)."""
    out = {}
    for root, _, files in os.walk(tag_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, tag_dir)
            if rel != MANIFEST and ".tmp" not in name:
                out[rel] = os.path.getsize(path)
    return out


def check_keep_last(keep_last: Optional[int], key: str = "stageN.keep_last") -> Optional[int]:
    """``keep_last`` as given, or a one-line UserError when it is not >= 1 (None = keep every checkpoint)."""
    if keep_last is not None and keep_last < 1:
        raise UserError(f"config key '{key}' must be >= 1 (the newest checkpoints kept; leave it unset to keep "
                        f"all), got {keep_last}")
    return keep_last


def rotate(ckpt_dir: str, keep_last: Optional[int], protect: Sequence[str] = ()) -> list[str]:
    """Delete the complete checkpoints beyond the newest ``keep_last`` and the interrupted ones older than the
    newest complete one, sparing the folders in ``protect``; returns the deleted folders. Not collective: rank 0
    calls it (``save`` does)."""
    if keep_last is None or not os.path.isdir(ckpt_dir):
        return []
    spared = {os.path.realpath(p) for p in protect if p}
    tags = sorted((n for n in os.listdir(ckpt_dir) if TAG.match(n)), key=_step_of, reverse=True)
    complete = [n for n in tags if os.path.isfile(os.path.join(ckpt_dir, n, MANIFEST))]
    if not complete:
        return []
    newest = _step_of(complete[0])
    doomed = complete[keep_last:] + [n for n in tags if n not in complete and _step_of(n) < newest]
    deleted = []
    for name in sorted(doomed, key=_step_of):
        path = os.path.join(ckpt_dir, name)
        if os.path.realpath(path) in spared:
            continue
        try:
            shutil.rmtree(path)
            deleted.append(path)
        except OSError as err:  # a checkpoint that cannot be deleted stays; the run goes on
            _note(f"could not delete old checkpoint {path} ({err}); delete it by hand")
    return deleted


def save(engine: TrainEngine, ckpt_dir: str, progress: dict, identity: dict, keep_last: Optional[int] = None,
         resumed_from: Optional[str] = None) -> None:
    """Collective: every rank calls it. ``progress`` = ``{"step", "consumed_samples", "last_loss"}`` (the step's
    reduced loss lets a run resumed at its final step report it); ``identity`` = what a resume must match
    (neuron-map hash, method). With ``keep_last``, rank 0 then rotates (``rotate``), sparing the new checkpoint
    and ``resumed_from``."""
    check_keep_last(keep_last)
    step = progress["step"]
    tag = f"step{step}"
    tag_dir = os.path.join(ckpt_dir, tag)
    previous = _newest_complete(ckpt_dir)
    kept = (f"the previous checkpoint {previous} is kept and --resume auto takes it" if previous
            else "no earlier checkpoint existed")
    rngs = parallel.all_gather_objects(_rng_state())
    state = {"step": step, "consumed_samples": progress["consumed_samples"], "world_size": parallel.world_size(),
             "last_loss": progress.get("last_loss"), **identity}
    error = None
    if parallel.is_main():
        try:
            os.makedirs(tag_dir, exist_ok=True)
            if os.path.exists(os.path.join(tag_dir, MANIFEST)):  # re-saving a tag: incomplete until the end
                os.remove(os.path.join(tag_dir, MANIFEST))
            atomic_write_text(os.path.join(tag_dir, STATE_FILE), json.dumps(state, indent=1))
        except UserError as err:
            error = str(err)
        except OSError as err:
            if not is_disk_full(err):
                raise
            error = str(disk_full_error(tag_dir, err, kept))
    error = parallel.broadcast_object(error)
    if error is not None:
        raise UserError(error)
    try:
        engine.save(ckpt_dir, tag, {**state, "rng": rngs})
    except Exception as err:
        if is_disk_full(err, tag_dir):  # the launcher stops the other ranks when this one exits
            raise disk_full_error(tag_dir, err, kept) from err
        raise
    parallel.barrier()
    files = {}
    for seen in parallel.all_gather_objects(_listing(tag_dir)):
        files.update(seen)
    if parallel.is_main():
        manifest = {"tag": tag, "step": step, "files": dict(sorted(files.items()))}
        try:
            atomic_write_text(os.path.join(tag_dir, MANIFEST), json.dumps(manifest, indent=1))
            atomic_write_text(os.path.join(ckpt_dir, LATEST), tag)
        except UserError as err:
            error = f"{err} ({kept})"
    error = parallel.broadcast_object(error)
    if error is not None:
        raise UserError(error)
    if parallel.is_main():
        rotate(ckpt_dir, keep_last, protect=(tag_dir, resumed_from or ""))
    parallel.barrier()


def _step_of(name: str) -> int:
    m = TAG.match(name)
    return int(m.group(1)) if m else -1


def _newest_complete(ckpt_dir: str, below: Optional[int] = None) -> Optional[str]:
    """The tag folder with the highest step that has a manifest (below step ``below`` if given), or None."""
    if not os.path.isdir(ckpt_dir):
        return None
    tags = sorted((n for n in os.listdir(ckpt_dir) if TAG.match(n)), key=_step_of, reverse=True)
    for name in tags:
        if below is not None and _step_of(name) >= below:
            continue
        if os.path.isfile(os.path.join(ckpt_dir, name, MANIFEST)):
            return os.path.join(ckpt_dir, name)
    return None


def _note(text: str) -> None:
    if parallel.is_main():
        print(text, file=sys.stderr, flush=True)


def _fallback(ckpt_dir: str, why: str, below: Optional[int] = None) -> Optional[str]:
    found = _newest_complete(ckpt_dir, below)
    _note(f"{why}; " + (f"resuming from {found}" if found else "no complete checkpoint before it: starting from "
                        "step 0"))
    return validate(found) if found else None


def find(ckpt_dir: str, resume: str) -> Optional[str]:
    """The checkpoint tag folder to resume from: ``auto`` = the latest complete one under ``ckpt_dir`` (None if
    there is none), ``never`` = None, else a path to a tag folder (which must be complete)."""
    if resume == "never":
        return None
    if resume != "auto":
        if not os.path.isfile(os.path.join(resume, STATE_FILE)):
            raise UserError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE}); use auto, never or a "
                            f"folder like <stage output>/checkpoints/step<N>")
        if not os.path.isfile(os.path.join(resume, MANIFEST)):
            raise UserError(f"--resume {resume}: incomplete checkpoint (no {MANIFEST}: its save was interrupted); "
                            f"use an earlier step folder or --resume auto")
        return validate(resume)
    latest = os.path.join(ckpt_dir, LATEST)
    if not os.path.isfile(latest):
        if _newest_complete(ckpt_dir):
            return _fallback(ckpt_dir, f"no {latest}")
        return None
    try:
        with open(latest, encoding="utf-8") as fh:
            tag = fh.read().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{latest}: unreadable ({err}); delete it to resume from the newest complete checkpoint, "
                        f"or use --resume never") from err
    if not tag:  # DeepSpeed truncates `latest` before writing it: a kill in between leaves it empty
        return _fallback(ckpt_dir, f"{latest} is empty (its write was interrupted)")
    tag_dir = os.path.join(ckpt_dir, tag)
    if os.sep in tag or tag in (".", "..") or not os.path.isdir(tag_dir):
        raise UserError(f"{latest} names checkpoint {tag[:80]!r}, which is not a folder in {ckpt_dir}; fix or "
                        f"delete {latest} (--resume auto then takes the newest complete checkpoint), or use "
                        f"--resume never / --resume <folder>")
    if not os.path.isfile(os.path.join(tag_dir, MANIFEST)):
        step = _step_of(tag)
        return _fallback(ckpt_dir, f"checkpoint {tag_dir} is incomplete (its save was interrupted)",
                         below=step if step >= 0 else None)
    return validate(tag_dir)


def validate(tag_dir: str) -> str:
    """Refuse a damaged checkpoint with one line naming the file: an unreadable manifest or trainer state, a
    file of the manifest missing or of another size. Returns ``tag_dir``."""
    manifest = _read_json(os.path.join(tag_dir, MANIFEST), "files")
    _read_json(os.path.join(tag_dir, STATE_FILE), "step", "consumed_samples")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise UserError(f"{os.path.join(tag_dir, MANIFEST)}: damaged ('files' is not a mapping); use --resume "
                        f"with an earlier step folder, or --resume never")
    for rel, size in files.items():
        path = os.path.join(tag_dir, rel)
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing (checkpoint {tag_dir} is damaged); use --resume with an earlier "
                            f"step folder, or --resume never")
        actual = os.path.getsize(path)
        if actual != size:
            raise UserError(f"{path}: {actual} bytes, the checkpoint wrote {size} (truncated or replaced); use "
                            f"--resume with an earlier step folder, or --resume never")
    return tag_dir


def _read_json(path: str, *keys: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as err:
        raise UserError(f"{path}: missing; use --resume with an earlier step folder, or --resume never") from err
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not readable JSON ({str(err).splitlines()[0][:100]}); the checkpoint is damaged: "
                        f"use --resume with an earlier step folder, or --resume never") from err
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise UserError(f"{path}: damaged (expected the keys {', '.join(keys)}); use --resume with an earlier "
                        f"step folder, or --resume never")
    return data


def load(engine: TrainEngine, tag_dir: str, identity: dict) -> dict:
    """Check ``identity`` against the checkpoint, load it into ``engine``, restore this rank's RNG; returns the
    client state (step, consumed_samples, ...)."""
    saved = _read_json(os.path.join(tag_dir, STATE_FILE), "step", "consumed_samples")
    for key, value in identity.items():
        if saved.get(key) != value:
            raise UserError(f"checkpoint {tag_dir} was taken with {key} = {saved.get(key)!r}, this run has "
                            f"{value!r}; use the matching neuron map / method, another output_dir, or --resume never")
    taken_on = saved.get("world_size", parallel.world_size())
    resharded = taken_on != parallel.world_size()
    try:  # frozen weights: from init_from
        if resharded:
            client = engine.load(universal(tag_dir), UNIVERSAL_TAG, universal=True)
        else:
            client = engine.load(os.path.dirname(tag_dir), os.path.basename(tag_dir))
    except UserError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"checkpoint {tag_dir}: DeepSpeed could not load it ({type(err).__name__}: {first}); use "
                        f"--resume with an earlier step folder, or --resume never") from err
    if client is None:
        raise UserError(f"DeepSpeed could not load checkpoint {tag_dir}")
    rngs = client["rng"]
    _set_rng_state(rngs[parallel.rank() % len(rngs)])  # another world size: old rank r mod N
    if resharded and parallel.is_main():
        _note(f"checkpoint {tag_dir} was taken on {taken_on} ranks; resumed on {parallel.world_size()} through its "
              f"universal form {os.path.join(tag_dir, UNIVERSAL_TAG)}")
    return client


UNIVERSAL_TAG = "universal"


def universal(tag_dir: str) -> str:
    """Collective. Make sure ``<tag_dir>/universal/`` holds DeepSpeed's universal form of the checkpoint (rank 0
    converts it once, into a temp folder renamed into place; a conversion that fails is one line on every rank);
    returns ``tag_dir``, the load folder whose tag ``universal`` it is."""
    target = os.path.join(tag_dir, UNIVERSAL_TAG)
    error = None
    if parallel.is_main() and not os.path.isdir(target):
        partial = os.path.join(tag_dir, f".{UNIVERSAL_TAG}.partial.{os.getpid()}")
        try:
            shutil.rmtree(partial, ignore_errors=True)
            parallel.to_universal(tag_dir, partial)
            os.replace(partial, target)
        except Exception as err:  # DeepSpeed's converter raises many kinds; a full disk among them
            shutil.rmtree(partial, ignore_errors=True)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            error = (f"checkpoint {tag_dir}: converting it for another world size failed ({type(err).__name__}: "
                     f"{first}); resume on the ranks it was taken on, or --resume never")
    error = parallel.broadcast_object(error)
    if error is not None:
        raise UserError(error)
    parallel.barrier()
    return tag_dir
