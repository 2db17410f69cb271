"""Benchmark: fast exact integrated gradients vs the reference, same examples, same process.

    python scripts/bench_attribution.py --json outputs/bench_attribution.json

A randomly initialised Llama (8 layers, hidden 256, fp32, sdpa), 20 steps, all layers, prompts of 256 and 1,024
tokens with a query-only baseline prompt. Reports per length: wall time of each method (best of ``--repeats``),
the speedup, the max relative error (max |fast - ref| / max |ref| over each example's attribution map), whether
the per-example top-20 sets agree, and the peak memory of each method above what was in use before the call (on
CPU the resident set, read from /proc after resetting the high-water mark, freed heap memory handed back first; on
a GPU the CUDA allocator's peak). The JSON maps ``lengths`` -> {"256": {...}, "1024": {...}}.

    python scripts/bench_attribution.py --shape smollm2 --json outputs/bench_attribution_smollm2.json

A randomly initialised model with SmolLM2-135M's config (LlamaConfig: 30 layers, hidden 576, FFN 1536, 9 heads /
3 KV heads, vocab 49152, tied embeddings; no download), prompts of 256, 512 and 1,024 tokens, and in the same
process: the fast IG (``fast_s``), one forward+backward of the prompt with every weight trainable (``fwd_bwd_s``,
the cost of a training step's gradient), the reference and Captum's ``IntegratedGradients`` on the last-position
FFN activation (riemann_left, the same IG). The reference and Captum are timed on ``--slow_layers`` (e.g. the
first and the last layer: a layer's cost is linear in its depth, so their mean times the layer count is the
whole map) and scaled linearly: the JSON says so under ``slow_scaled_from_layers``. Default: the middle layer
``L // 2`` alone (its cost is just under the mean, so the speedups are if anything understated). ``max_rel_err``
compares the fast map with the reference on those layers. Keys per length: ``fast_s``, ``fwd_bwd_s``, ``ig_over_fwd_bwd``,
``speedup_vs_reference``, ``speedup_vs_captum``, ``max_rel_err``, ``peak_mb``, plus the raw times and
``mining_questions_per_minute`` (two prompts per question, each one fast IG with its query-only baseline).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import time

import torch

from attribution.ig import integrated_gradients
from attribution.ig_common import IGInput, IGOptions, probe_scaled_position
from attribution.selection import example_topk
from attribution.targets import YesProb
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


# ------------------------------------------------------------------------------------------- real shapes
SHAPES = {  # Hugging Face configs of real models, random weights
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                    rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192, hidden_act="silu"),
}


def build_shape(shape: str, device, seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**SHAPES[shape])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").float().eval().to(device)
    model.requires_grad_(False)
    return model


class LayerSubset:
    """A patcher seen through some of its layers (layer ``i`` here is layer ``subset[i]`` of the model), so the
    unchanged reference attributes only those layers."""

    def __init__(self, patcher, subset):
        self._patcher, self.subset = patcher, list(subset)
        self.num_layers, self.intermediate_size = len(self.subset), patcher.intermediate_size

    @contextlib.contextmanager
    def probe(self, layers=None, positions="last"):
        real = None if layers is None else [self.subset[i] for i in layers]
        with self._patcher.probe(layers=real, positions=positions) as store:
            yield _Mapped(store, self.subset)

    def set_scale(self, spec: dict) -> None:
        self._patcher.set_scale({self.subset[i]: v for i, v in spec.items()})

    def clear_scale(self) -> None:
        self._patcher.clear_scale()

    @property
    def scaled(self) -> dict:
        return {i: self._patcher.scaled[l] for i, l in enumerate(self.subset) if l in self._patcher.scaled}


class _Mapped:
    def __init__(self, store, subset):
        self.store, self.subset = store, subset

    def __getitem__(self, i):
        return self.store[self.subset[i]]


def captum_ig(model, patcher, inp: IGInput, layers, steps: int, batch: int) -> torch.Tensor:
    """Captum's ``IntegratedGradients`` on the last-position FFN activation (the input of ``down_proj``) of each
    of ``layers``: riemann_left, ``steps`` steps, ``batch`` steps per internal batch; ``[len(layers), d_ff]``."""
    from captum.attr import IntegratedGradients

    device = next(model.parameters()).device
    ids = inp.input_ids.view(1, -1).to(device)
    acts, _, _ = probe_scaled_position(model, patcher, ids, use_cache=False)
    base, _, _ = probe_scaled_position(model, patcher, inp.baseline_ids.view(1, -1).to(device), use_cache=False)
    out = []
    for layer in layers:
        down = patcher.layout.layers(model)[layer].mlp.down_proj
        held = {}

        def swap_last(_module, args):
            x = args[0]
            return (torch.cat([x[:, :-1], held["h"].unsqueeze(1).to(x.dtype)], dim=1),)

        def forward_func(h):
            held["h"] = h
            logits = model(input_ids=ids.expand(h.shape[0], -1), use_cache=False, logits_to_keep=1).logits
            return inp.target.value(logits[:, -1:])

        handle = down.register_forward_pre_hook(swap_last)
        try:
            attr = IntegratedGradients(forward_func).attribute(
                acts[layer:layer + 1], baselines=base[layer:layer + 1], n_steps=steps, method="riemann_left",
                internal_batch_size=batch)
        finally:
            handle.remove()
        out.append(attr[0].detach().double().cpu())
    return torch.stack(out)


def fwd_bwd(model, ids: torch.Tensor) -> None:
    """One forward+backward of the prompt with every weight trainable (a training step without the update)."""
    model.requires_grad_(True)
    try:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)


def main_shape(args, device) -> dict:
    shape = args.shape
    model = build_shape(shape, device)
    patcher = patch_model(model)
    cfg = SHAPES[shape]
    n_layers, vocab = cfg["num_hidden_layers"], cfg["vocab_size"]
    slow_layers = [n_layers // 2] if args.slow_layers == "mid" else [int(x) % n_layers for x in args.slow_layers.split(",")]
    lengths = [int(x) for x in (args.lengths or "256,512,1024").split(",")]
    chunk_rows = args.chunk_rows if args.chunk_rows > 0 else n_layers * args.steps
    options = IGOptions(steps=args.steps, chunk_rows=chunk_rows)
    gen = torch.Generator().manual_seed(0)
    report = {"model": {"shape": shape, "family": "llama", **cfg, "dtype": "float32", "attn": "sdpa",
                        "weights": "random"},
              "steps": args.steps, "chunk_rows_fast": chunk_rows, "repeats": args.repeats, "threads": args.threads,
              "device": str(device), "slow_scaled_from_layers": slow_layers,
              "slow_scaling": f"reference and captum timed on layers {slow_layers} of {n_layers}; whole-map time = "
                              f"mean over those layers x {n_layers} (a layer's cost is linear in its depth, so the "
                              f"middle layer's is the mean; layer {n_layers // 2} slightly under it)",
              "slow_batch_tokens": args.slow_batch_tokens, "lengths": {}}
    warm = IGInput(torch.randint(3, vocab, (16,), generator=gen), torch.randint(3, vocab, (8,), generator=gen),
                   YesProb((7,)))
    integrated_gradients(model, patcher, warm, IGOptions(steps=2, chunk_rows=chunk_rows))  # lazy init out
    fwd_bwd(model, warm.input_ids.view(1, -1).to(device))
    for length in lengths:
        prompt = torch.randint(3, vocab, (length,), generator=gen)
        query = torch.randint(3, vocab, (32,), generator=gen)
        inp = IGInput(prompt, query, YesProb((7,)))
        fast, t_fast, peak = None, float("inf"), 0.0
        for _ in range(args.repeats):
            res, sec, mb = measure(lambda: integrated_gradients(model, patcher, inp, options, "fast"), device)
            fast, t_fast, peak = res, min(t_fast, sec), max(peak, mb)
        t_fb = min(measure(lambda: fwd_bwd(model, prompt.view(1, -1).to(device)), device)[1]
                   for _ in range(args.repeats))
        row = {"fast_s": t_fast, "fwd_bwd_s": t_fb, "ig_over_fwd_bwd": t_fast / t_fb, "peak_mb": peak,
               "mining_questions_per_minute": 60.0 / (2 * t_fast)}
        batch = max(1, min(args.steps, args.slow_batch_tokens // length))
        if not args.no_reference:
            ref_settings = IGOptions(steps=args.steps, chunk_rows=batch)
            ref, t_ref, _ = measure(lambda: integrated_gradients(model, LayerSubset(patcher, slow_layers), inp,
                                                                 ref_settings, "reference"), device)
            ref = ref.attributions
            row["reference_s"] = t_ref / len(slow_layers) * n_layers
            row["reference_timed_s"] = t_ref
            row["speedup_vs_reference"] = row["reference_s"] / t_fast
            sub = fast.attributions[slow_layers]
            row["max_rel_err"] = float((sub - ref).abs().max() / ref.abs().max())
            row["top20_identical"] = top20(sub) == top20(ref)
        if not args.no_captum:
            cap, t_cap, _ = measure(lambda: captum_ig(model, patcher, inp, slow_layers, args.steps, batch), device)
            row["captum_s"] = t_cap / len(slow_layers) * n_layers
            row["captum_timed_s"] = t_cap
            row["captum_internal_batch_size"] = batch
            row["speedup_vs_captum"] = row["captum_s"] / t_fast
            sub = fast.attributions[slow_layers]
            row["captum_max_rel_err"] = float((sub - cap).abs().max() / cap.abs().max())
        row["slow_steps_per_pass"] = batch
        report["lengths"][str(length)] = row
        print(f"T={length:5d}  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in row.items()), flush=True)
    return report


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--shape", default="", choices=["", *SHAPES], help="a real model's config, random weights")
    ap.add_argument("--lengths", default="", help="default 256,1024 (256,512,1024 with --shape)")
    ap.add_argument("--slow_layers", default="mid",
                    help="--shape: layers the reference and Captum are timed on (comma list; 'mid' = layers // 2)")
    ap.add_argument("--slow_batch_tokens", type=int, default=2048,
                    help="--shape: tokens per pass of the reference / Captum (steps per pass = this // length)")
    ap.add_argument("--no_reference", action="store_true")
    ap.add_argument("--no_captum", action="store_true")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--chunk_rows", type=int, default=0,
                    help="fast path rows per pass (default 16; with --shape: layers x steps, one pass)")
    ap.add_argument("--ref_chunk_rows", type=int, default=20, help="reference: steps batched per pass")
    ap.add_argument("--examples", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.shape:
        report = main_shape(args, device)
        _write(args.json, report)
        return report
    args.chunk_rows = args.chunk_rows or 16
    lengths = [int(x) for x in (args.lengths or "256,1024").split(",")]
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
            inp = IGInput(prompt, query, YesProb((7,)))
            out = {}
            for method, rows in (("fast", args.chunk_rows), ("reference", args.ref_chunk_rows)):
                options = IGOptions(steps=args.steps, chunk_rows=rows)
                best = float("inf")
                for _ in range(args.repeats):
                    res, sec, peak = measure(lambda: integrated_gradients(model, patcher, inp, options, method),
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
    _write(args.json, report)
    return report


def _write(path: str, report: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
