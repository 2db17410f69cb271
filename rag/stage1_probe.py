"""Stage-1 dev probe: does the model end its answer at once on noise, and only on noise? (issue 19, item 3)

One forward pass per prompt, no generation. The prompts are evaluation's own (``eval.instruction``: the
``two_step`` or ``answer_only`` builder of ``neurorit/prompts.py``, documents per ``neurorit/settings.py``, chat
wrapping per ``data.chat_template``); the *end token* is the one that closes the assistant turn
(``PromptBuilder.stop_ids``: the chat template's end-of-turn token), or ``eos_token`` without a template. Per
setting (``noise_only``: every answer-bearing passage removed; ``gold``: the gold passage alone) it reports the
share of prompts whose most likely first token is the end token (an empty answer under greedy decoding) and the
mean probability of the end token. Stage 1 works when the ``noise_only`` share is high and the ``gold`` share
stays near zero.

    python -m rag.stage1_probe --config configs/smollm2.yaml --model outputs/smollm2/stage1/export \\
        [--split dev] [--num-examples N] [--kinds known fresh] [--max-per-kind N] [--out probe.json]
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

if __name__ == "__main__" and not __package__:  # run as a script: import from the repo root, not from rag/
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch

from neurorit.errors import main_guard
from neurorit.prompts import PromptBuilder, encode
from neurorit.records import Record
from neurorit.settings import docs_for_setting, has_setting

PROBE_SETTINGS = ("noise_only", "gold")


def end_token_ids(tokenizer, builder: PromptBuilder) -> list[int]:
    """The token(s) that close the assistant turn: the chat template's end-of-turn token, else ``eos_token``."""
    ids = list(builder.stop_ids) or [tokenizer.eos_token_id]
    if any(i is None for i in ids):
        raise ValueError("the tokenizer has no end token (no chat end-of-turn token and no eos_token)")
    return [int(i) for i in ids]


def probe_prompts(records: Sequence[Record], setting: str, builder: PromptBuilder, tokenizer, instruction: str,
                  num_docs: int, max_length: int) -> tuple[list[Record], list[list[int]]]:
    """Evaluation's prompts of ``setting`` (records that have it), token ids without any target."""
    make = builder.two_step if instruction == "two_step" else builder.answer_only
    kept, prompts = [], []
    for rec in records:
        if has_setting(rec, setting):
            parts = make(rec.question, docs_for_setting(rec, setting, num_docs))
            prompts.append(encode(tokenizer, parts, max_length, with_output=False).input_ids)
            kept.append(rec)
    return kept, prompts


@torch.inference_mode()
def first_token_probs(model, prompts: Sequence[Sequence[int]], batch_size: int = 8,
                      pad_id: int = 0) -> torch.Tensor:
    """``[len(prompts), vocab]`` next-token probabilities after each prompt (right-padded batches: a row's last
    real position sees exactly its own prompt; logits only at the batch's last positions, ``logits_to_keep``)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, :len(p)] = torch.tensor(p, dtype=torch.long)
            mask[i, :len(p)] = 1
        last = torch.tensor([len(p) - 1 for p in chunk])
        columns = last.unique()  # sorted
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       logits_to_keep=columns.to(device)).logits
        pick = torch.searchsorted(columns, last).to(logits.device)
        out.append(torch.softmax(logits[torch.arange(len(chunk), device=logits.device), pick].float(), -1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def _shares(probs: torch.Tensor, end: list[int], ids: Optional[Sequence[str]] = None) -> dict:
    """The end token's share of first places and mean probability; with ``ids``, also ``ended``: per record id,
    1 when the end token came first (what a mined-vs-random comparison pairs on, ``rag/selection.py``)."""
    if not len(probs):
        return {"n": 0, "end_share": 0.0, "end_prob": 0.0, **({"ended": {}} if ids is not None else {})}
    end_t = torch.tensor(end)
    top_is_end = torch.isin(probs.argmax(-1), end_t)
    out = {"n": len(probs), "end_share": float(top_is_end.double().mean()),
           "end_prob": float(probs[:, end_t].sum(-1).double().mean())}
    if ids is not None:
        out["ended"] = {i: int(e) for i, e in zip(ids, top_is_end.tolist())}
    return out


@dataclass(frozen=True)
class ProbeSpec:
    """What the probe asks: evaluation's ``instruction`` and prompt sizes, the ``settings`` probed, and (``kinds``)
    only the records whose ``meta.kind`` is listed."""

    instruction: str = "two_step"
    num_docs: int = 5
    max_length: int = 1024
    batch_size: int = 8
    settings: tuple = PROBE_SETTINGS
    kinds: Optional[tuple] = None


def stage1_probe(model, tokenizer, records: Sequence[Record], builder: PromptBuilder,
                 spec: ProbeSpec = ProbeSpec()) -> dict:
    """``{setting: {"n", "end_share", "end_prob", "ended"}, "by_kind": {kind: {setting: ...}}, "end_ids": [...]}``:
    per setting, the share of prompts whose most likely first token is the end token, its mean probability, and
    per record id whether it came first."""
    instruction, num_docs, max_length, kinds = spec.instruction, spec.num_docs, spec.max_length, spec.kinds
    end = end_token_ids(tokenizer, builder)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end[0]
    if kinds:
        records = [r for r in records if str(r.meta.get("kind", "")) in set(kinds)]
    result: dict = {"end_ids": end, "instruction": instruction, "by_kind": {}}
    for setting in spec.settings:
        kept, prompts = probe_prompts(records, setting, builder, tokenizer, instruction, num_docs, max_length)
        probs = first_token_probs(model, prompts, spec.batch_size, pad)
        result[setting] = _shares(probs, end, [r.id for r in kept])
        for kind in dict.fromkeys(str(r.meta.get("kind", "")) for r in kept if r.meta.get("kind")):
            rows = torch.tensor([str(r.meta.get("kind", "")) == kind for r in kept])
            result["by_kind"].setdefault(kind, {})[setting] = _shares(probs[rows], end)
    return result


def probe_text(result: dict) -> str:
    parts = [f"{s}: end token first in {r['end_share']:.1%} of {r['n']} (mean p {r['end_prob']:.2e})"
             for s, r in result.items() if isinstance(r, dict) and "end_share" in r]
    return "stage-1 probe: " + "; ".join(parts)


# ------------------------------------------------------------------------------------------------ entry
def _extra_args(parser) -> None:
    parser.add_argument("--model", required=True, help="the checkpoint to probe (a plain Hugging Face folder)")
    parser.add_argument("--split", default="dev", choices=("train", "dev", "test"), help="records (default dev)")
    parser.add_argument("--kinds", nargs="*", default=None, help="keep only these meta.kind values")
    parser.add_argument("--num-examples", type=int, default=-1, help="the first N records of the split (-1: all)")
    parser.add_argument("--max-per-kind", type=int, default=-1,
                        help="at most N records of each meta.kind (of --kinds when given), in file order (-1: all)")
    parser.add_argument("--out", default="", help="write the result as JSON here too")


@main_guard
def main(argv=None) -> dict:
    from model_patches import load_causal_lm, load_tokenizer
    from neurorit import runtime
    from neurorit.config import parse_args
    from neurorit.files import atomic_write_text
    from neurorit.prompts import prompt_builder
    from neurorit.records import load_records, select_by_kind

    args, cfg = parse_args("Stage-1 probe: end-token share on noise-only and gold-only prompts.", argv, _extra_args)
    runtime.start(cfg.runtime, args.local_rank)
    path = {"train": cfg.data.train_file, "dev": cfg.data.dev_file, "test": cfg.data.test_file}[args.split]
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation)
    model.eval()
    spec = ProbeSpec(cfg.eval.instruction, cfg.data.num_docs, cfg.data.max_length, cfg.eval.batch_size,
                     kinds=tuple(args.kinds) if args.kinds else None)
    records = select_by_kind(load_records(path, -1, cfg.data.columns), args.kinds or [], args.max_per_kind)
    records = records[:args.num_examples] if args.num_examples > 0 else records
    result = stage1_probe(model, tokenizer, records, prompt_builder(cfg.data, tokenizer), spec)
    print(probe_text(result))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
