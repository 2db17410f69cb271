"""The evaluation settings, as a registry: each setting's name, which passages a prompt shows, whether it applies
to a record, and its legend in results.md. The config (``eval.settings``, ``selection.settings``), the evaluator,
the stage data and the report read this registry; a new setting is one ``@setting`` function.

Registered: ``gold`` (the gold passage alone), ``top5`` (the natural top-K), ``noise_only`` (top-K with every
answer-bearing passage removed), ``counterfactual`` (the gold passage plus counterfactual passages; only records
that have them), and ``closed_book`` (no passages). The passages of a prompt are shown in a fixed per-record
shuffled order when ``shuffle`` is set, so that the reader cannot learn "the first passage is the right one".
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Callable

from neurorit.records import Passage, Record, noise_passages, ranked, relevant_passages


@dataclass(frozen=True)
class Setting:
    """One evaluation setting: ``passages(record, k)`` picks what the prompt shows (before the shuffle);
    ``applies(record)`` says whether the record takes part; ``legend`` explains it in results.md."""

    name: str
    legend: str
    passages: Callable[[Record, int], list[Passage]]
    applies: Callable[[Record], bool]


REGISTRY: dict[str, Setting] = {}


def _always(record: Record) -> bool:
    return True


def setting(name: str, legend: str, applies: Callable[[Record], bool] = _always):
    """Register the decorated ``passages(record, k)`` as the setting ``name`` (in registration order)."""
    def register(passages: Callable[[Record, int], list[Passage]]):
        if name in REGISTRY:
            raise ValueError(f"setting {name!r} is registered twice")
        REGISTRY[name] = Setting(name, legend, passages, applies)
        return passages
    return register


@setting("gold", "gold passage only")
def _gold(record: Record, k: int) -> list[Passage]:
    return relevant_passages(record)[:1]


@setting("top5", "natural top-5")
def _top(record: Record, k: int) -> list[Passage]:
    return ranked(record)[:k]


@setting("noise_only", "top-5 with every answer-bearing passage removed")
def _noise_only(record: Record, k: int) -> list[Passage]:
    return noise_passages(record, k)


@setting("counterfactual", "gold + a contradicting passage", applies=lambda r: bool(r.counterfactual_ctxs))
def _counterfactual(record: Record, k: int) -> list[Passage]:
    return relevant_passages(record)[:1] + list(record.counterfactual_ctxs)


@setting("closed_book", "no documents")
def _closed_book(record: Record, k: int) -> list[Passage]:
    return []


def names() -> tuple:
    """The registered settings' names, in registration order (the order of the report)."""
    return tuple(REGISTRY)


def get(name: str) -> Setting:
    """The registered setting ``name``; a ValueError naming the registered ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown setting {name!r}; use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def record_rng(record: Record, salt: str = "") -> random.Random:
    return random.Random(zlib.crc32(f"{record.id}|{salt}".encode()))


def docs_for_setting(record: Record, setting: str, k: int = 5, shuffle: bool = True) -> list[Passage]:
    docs = get(setting).passages(record, k)
    if shuffle:
        docs = list(docs)
        record_rng(record, setting).shuffle(docs)
    return docs


def has_setting(record: Record, setting: str) -> bool:
    """Whether ``record`` takes part in ``setting`` (counterfactual needs counterfactual passages)."""
    return get(setting).applies(record)


def legend() -> str:
    """The settings paragraph of results.md, from the registry."""
    return "settings: " + ", ".join(f"`{s.name}` = {s.legend}" for s in REGISTRY.values()) + "."
