"""Benchmark: fast exact integrated gradients vs the reference, same examples, same process.

    python scripts/bench_attribution.py --json outputs/bench_attribution.json

A randomly initialised Llama (8 layers, hidden 256, fp32, sdpa), 20 steps, all layers, prompts of 256 and 1,024
tokens with a query-only baseline prompt. Reports per length: wall time of each method (best of ``--repeats``),
the speedup, the max relative error (max |fast - ref| / max |ref| over each example's attribution map), whether
the per-example top-20 sets agree, and the peak memory of each method above what was in use before the call (on
CPU the resident set, read from /proc after resetting the high-water mark, freed heap memory handed back first; on
a GPU the CUDA allocator's peak). The JSON maps ``lengths`` -> {"256": {...}, "1024": {...}}.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import time

import torch

from attribution.ig import integrated_gradients
from attribution.ig_common import IGInput, IGSettings
from attribution.selection import example_topk
from attribution.targets import Target
from model_patches.patcher import patch_model


def _trim() -> None:
    """glibc: give freed heap memory back to the system, so a call's peak is not hidden by reused memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def measure(fn, device: torch.device):
    """(result, seconds, peak MB above the memory in use before the call): CUDA allocator statistics on a GPU,
    the process's resident set on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _trim()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current resident set
        before = _status_kb("VmRSS") * 1024
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _status_kb("VmHWM") * 1024
    return out, seconds, (peak - before) / 2**20


def build_model(layers: int, hidden: int, intermediate: int, vocab: int, max_len: int, seed: int, device):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                      max_position_embeddings=max_len, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").float().eval().to(device)
    model.requires_grad_(False)
    return model


def top20(attr: torch.Tensor) -> set:
    ids, _ = example_topk(attr, 0.1, 20)
    return set(ids[ids >= 0].tolist())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--lengths", default="256,1024")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--chunk_rows", type=int, default=16, help="fast path rows per pass")
    ap.add_argument("--ref_chunk_rows", type=int, default=20, help="reference: steps batched per pass")
    ap.add_argument("--examples", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    device = torch.device(args.device)
    model = build_model(args.layers, args.hidden, args.intermediate, args.vocab, max(lengths), seed=0, device=device)
    patcher = patch_model(model)
    gen = torch.Generator().manual_seed(0)
    report = {"model": {"family": "llama", "layers": args.layers, "hidden": args.hidden,
                        "intermediate": args.intermediate, "vocab": args.vocab, "dtype": "float32", "attn": "sdpa"},
              "steps": args.steps, "chunk_rows_fast": args.chunk_rows, "chunk_rows_ref": args.ref_chunk_rows,
              "examples": args.examples, "repeats": args.repeats, "threads": args.threads, "device": str(device),
              "lengths": {}}
    for length in lengths:
        times = {"fast": [], "reference": []}
        peaks = {"fast": 0.0, "reference": 0.0}
        err, same_top = 0.0, True
        for _ in range(args.examples):
            prompt = torch.randint(3, args.vocab, (length,), generator=gen)
            query = torch.randint(3, args.vocab, (32,), generator=gen)
            inp = IGInput(prompt, query, Target("yes_prob", 7))
            out = {}
            for method, rows in (("fast", args.chunk_rows), ("reference", args.ref_chunk_rows)):
                settings = IGSettings(steps=args.steps, chunk_rows=rows)
                best = float("inf")
                for _ in range(args.repeats):
                    res, sec, peak = measure(lambda: integrated_gradients(model, patcher, inp, settings, method),
                                             device)
                    best, peaks[method] = min(best, sec), max(peaks[method], peak)
                times[method].append(best)
                out[method] = res.attributions
            ref = out["reference"]
            err = max(err, float((out["fast"] - ref).abs().max() / ref.abs().max()))
            same_top &= top20(out["fast"]) == top20(ref)
        t_fast, t_ref = sum(times["fast"]), sum(times["reference"])
        row = {"speedup": t_ref / t_fast, "max_rel_err": err, "peak_mb_fast": peaks["fast"],
               "peak_mb_ref": peaks["reference"], "time_fast_s": t_fast / args.examples,
               "time_ref_s": t_ref / args.examples, "top20_identical": same_top}
        report["lengths"][str(length)] = row
        print(f"T={length:5d}  fast {row['time_fast_s']:7.2f}s  ref {row['time_ref_s']:8.2f}s  "
              f"speedup {row['speedup']:6.1f}x  max_rel_err {err:.2e}  top20 same {same_top}  "
              f"peak MB fast {row['peak_mb_fast']:.0f} ref {row['peak_mb_ref']:.0f}", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
