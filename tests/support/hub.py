"""A Hugging Face hub cache laid out by a test, as ``hf download`` leaves it (no network here):
``models--org--name/snapshots/<commit>/`` holding a model and its tokenizer, ``refs/<ref>`` naming the commit."""
from __future__ import annotations

import os
from typing import Optional


def hub_snapshot(cache: str, repo: str, commit: str, model, tokenizer, ref: Optional[str] = "main") -> str:
    """Save ``model`` and ``tokenizer`` as ``repo`` at ``commit`` in the cache folder ``cache``; returns the
    snapshot folder."""
    root = os.path.join(str(cache), f"models--{repo.replace('/', '--')}")
    folder = os.path.join(root, "snapshots", commit)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if ref:
        os.makedirs(os.path.join(root, "refs"), exist_ok=True)
        with open(os.path.join(root, "refs", ref), "w") as fh:
            fh.write(commit)
    return folder
