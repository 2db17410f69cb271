"""Atomic file writes: write a temp file beside the target, then rename, so a reader (or a resumed run) never
sees a half-written file."""
from __future__ import annotations

import os


def atomic_write_text(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path
