"""Which documents a prompt shows in each evaluation setting (and in the stage data).

Settings: ``gold`` (the gold passage alone), ``top5`` (the natural top-K), ``noise_only`` (top-K with every
answer-bearing passage removed), ``counterfactual`` (the gold passage plus counterfactual passages), and
``closed_book`` (no documents). The documents of a prompt are shown in a fixed per-record shuffled order when
``shuffle`` is set, so that the reader cannot learn "the first document is the right one".
"""
from __future__ import annotations

import random
import zlib

from neurorit.records import Passage, Record, noise_passages, ranked, relevant_passages

SETTINGS = ("gold", "top5", "noise_only", "counterfactual", "closed_book")


def record_rng(record: Record, salt: str = "") -> random.Random:
    return random.Random(zlib.crc32(f"{record.id}|{salt}".encode()))


def docs_for_setting(record: Record, setting: str, k: int = 5, shuffle: bool = True) -> list[Passage]:
    if setting == "gold":
        docs = relevant_passages(record)[:1]
    elif setting == "top5":
        docs = ranked(record)[:k]
    elif setting == "noise_only":
        docs = noise_passages(record, k)
    elif setting == "counterfactual":
        docs = relevant_passages(record)[:1] + list(record.counterfactual_ctxs)
    elif setting == "closed_book":
        docs = []
    else:
        raise ValueError(f"unknown setting {setting!r}; use one of {', '.join(SETTINGS)}")
    if shuffle:
        docs = list(docs)
        record_rng(record, setting).shuffle(docs)
    return docs


def has_setting(record: Record, setting: str) -> bool:
    """Counterfactual needs counterfactual passages; every other setting applies to every record."""
    return setting != "counterfactual" or bool(record.counterfactual_ctxs)
