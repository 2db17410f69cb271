"""Benchmark: a training step of Neuro-RIT stage 1 and stage 2 (neuron deltas) against full fine-tuning and
against full-weight gradient masking (the release's way), on one random Llama (default 8 layers, width 512; with
``--shape smollm2`` SmolLM2-135M's config: 30 layers, hidden 576, FFN 1536, 9 heads / 3 KV heads, vocab 49152,
tied embeddings, random weights, no download).

    .venv/bin/python scripts/bench_training.py --json outputs/bench_training.json
    .venv/bin/python scripts/bench_training.py --shape smollm2 --json outputs/bench_training_smollm2.json
    .venv/bin/python scripts/bench_training.py --shape smollm2 --map outputs/smollm2/mining   # the mined neurons

Every variant uses the project's trainable sets (``train.trainable``) and torch's AdamW (weight decay 0) on the same
batches. Gradient masking trains the full FFN weights of the layers that hold selected neurons (stage 2: every
layer) with their gradients zeroed outside the selected rows/columns; target-layer FFNs train unmasked.

- step time: forward + backward + optimizer step, the median over rounds that visit the variants in turn, all in
  this process (so background load hits them alike); ``forward_s`` / ``backward_s`` / ``optimizer_s`` split it;
- optimizer state: bytes held by AdamW after a step;
- peak memory: the rise of the memory high-water mark while building and training the variant (CUDA:
  ``max_memory_allocated``; CPU: ``VmHWM`` minus ``VmRSS`` before building, in a fresh spawned process per variant).

The JSON holds every variant's numbers under ``variants`` and, relative to full fine-tuning,
``stage1_optimizer_state_ratio``, ``stage1_step_time_ratio``, ``stage1_peak_memory_ratio`` and the same for
stage 2; ``vs_grad_mask`` holds the same keys relative to gradient masking of the same neurons.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time

import torch
import transformers as tf

from model_patches import model_fingerprint
from neurorit.config import StageConfig
from neurorit.methods import METHODS
from neurorit.neuron_map import NeuronMap
from train import recipes
from train.trainable import neuron_spec

VARIANTS = ("full", "stage1", "stage2", "grad_mask_stage1", "grad_mask_stage2")
SHAPES = {  # real models' configs (random weights): the size flags they set
    "smollm2": dict(layers=30, hidden=576, intermediate=1536, vocab=49152, heads=9, kv_heads=3, tied=True,
                    rope_theta=100000.0),
}


def build_model(a) -> torch.nn.Module:
    cfg = tf.LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                         head_dim=a.hidden // a.heads, max_position_embeddings=max(256, a.seq),
                         tie_word_embeddings=a.tied, rope_theta=a.rope_theta)
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(a.device).train()


def random_map(model, a) -> NeuronMap:
    """Mining-sized groups spread at random over the layers; the last ``targets`` layers are the targets."""
    gen = torch.Generator().manual_seed(1)
    sizes = {"relevant_only": a.n_relevant, "irrelevant_only": a.n_irrelevant, "shared": a.n_shared}
    flat = torch.randperm(a.layers * a.intermediate, generator=gen)[: sum(sizes.values())]
    groups, start = {}, 0
    for group, n in sizes.items():
        ids = flat[start:start + n]
        start += n
        groups[group] = torch.stack([ids // a.intermediate, ids % a.intermediate,
                                     torch.ones_like(ids), torch.ones_like(ids)], dim=1)
    return NeuronMap(groups, list(range(a.layers - a.targets, a.layers)), model_fingerprint(model))


def grad_mask_params(model, nmap, stage: str, a) -> list:
    """Full FFN weights with gradient hooks that keep only the selected neurons' rows / columns."""
    spec, full_layers = neuron_spec(recipes.build(METHODS["neurorit"].rule(stage)), nmap, a.intermediate, 0)
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for layer, block in enumerate(model.model.layers):
        mlp = block.mlp
        if layer not in full_layers and layer not in spec:
            continue
        weights = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
        for w in weights:
            w.requires_grad_(True)
        if layer not in full_layers:
            keep = torch.zeros(a.intermediate, device=a.device)
            keep[spec[layer].to(a.device)] = 1.0
            for w, mask in zip(weights, (keep[:, None], keep[:, None], keep[None, :])):
                w.register_hook(lambda g, m=mask: g * m)
        params += list(weights)
    return params


def neuron_map(model, a) -> NeuronMap:
    """``--map``: a mined map (its model must have this shape), else ``random_map``."""
    if not a.map:
        return random_map(model, a)
    nmap = NeuronMap.load(a.map)
    nmap.check_fingerprint(model_fingerprint(model))
    return nmap


def setup(variant: str, a):
    model = build_model(a)
    nmap = neuron_map(model, a)
    if variant.startswith("grad_mask_"):
        params = grad_mask_params(model, nmap, variant.removeprefix("grad_mask_"), a)
    else:
        method, stage = ("full", "stage1") if variant == "full" else ("neurorit", variant)
        _, trainable = recipes.setup_stage(model, recipes.build(METHODS[method].rule(stage)), nmap, 0, StageConfig())
        params = trainable.params
    return model, params, torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)


def step(model, optimizer, batch) -> None:
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed_step(model, optimizer, batch, sync) -> tuple[float, float, float]:
    """``step`` with its (forward, backward, optimizer) seconds."""
    t0 = time.perf_counter()
    loss = model(input_ids=batch, labels=batch).loss
    sync()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync()
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def state_bytes(optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if torch.is_tensor(t))


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _child_peak(variant: str, a, batch, conn) -> None:
    """In a fresh process: warm up on a tiny model, then build and train ``variant``; send the peak rise (MB)."""
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    tiny = argparse.Namespace(**{**vars(a), "layers": a.targets + 1, "hidden": 64, "intermediate": 128, "heads": 4,
                                 "kv_heads": 2, "map": ""})
    step(*setup("stage2", tiny)[::2], batch)  # lazy initialisation stays out of the measurement
    start = _status_kb("VmRSS")
    model, _, opt = setup(variant, a)
    for _ in range(2):
        step(model, opt, batch)
    conn.send((_status_kb("VmHWM") - start) / 1024)


def peak_memory_mb(variant: str, a, batch) -> float:
    """Peak memory rise of building + two steps of ``variant``: CUDA ``max_memory_allocated``; on CPU the
    high-water mark of resident memory in a fresh (spawned) process, so earlier variants cannot hide it."""
    if a.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        model, _, opt = setup(variant, a)
        for _ in range(2):
            step(model, opt, batch)
        peak = torch.cuda.max_memory_allocated() - before
        del model, opt
        torch.cuda.empty_cache()
        return peak / 2**20
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_peak, args=(variant, a, batch, send))
    child.start()
    value = receive.recv() if receive.poll(1800) else float("nan")
    child.join()
    return value


def neuron_summary(a) -> dict:
    """The groups' sizes and where they sit: with ``--map`` the mined ones, else the random spread's."""
    if not a.map:
        return {"map": "random over all layers", "relevant_only": a.n_relevant, "irrelevant_only": a.n_irrelevant,
                "shared": a.n_shared, "target_layers": a.targets}
    nmap = NeuronMap.load(a.map)
    out = {"map": a.map, **{g: len(rows) for g, rows in nmap.groups.items()}, "target_layers": nmap.target_layers}
    stage1 = nmap.groups["irrelevant_only"]
    out["lowest_stage1_layer"] = int(stage1[:, 0].min()) if len(stage1) else None
    return out


def ratios(num: dict, den: dict) -> dict:
    return {"optimizer_state_ratio": num["optimizer_state_mb"] / den["optimizer_state_mb"],
            "step_time_ratio": num["step_time_s"] / den["step_time_s"],
            "peak_memory_ratio": num["peak_memory_mb"] / den["peak_memory_mb"]}


def run(a) -> dict:
    gen = torch.Generator().manual_seed(2)
    batch = torch.randint(0, a.vocab, (a.batch, a.seq), generator=gen).to(a.device)
    peaks = {v: peak_memory_mb(v, a, batch) for v in VARIANTS}
    built = {v: setup(v, a) for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    phases = {v: [] for v in VARIANTS}
    sync = torch.cuda.synchronize if a.device.type == "cuda" else (lambda: None)
    for r in range(a.warmup + a.rounds):
        for v, (model, _, opt) in built.items():
            parts = timed_step(model, opt, batch, sync)
            if r >= a.warmup:
                times[v].append(sum(parts))
                phases[v].append(parts)
    variants = {v: {"trainable_params": sum(p.numel() for p in built[v][1]),
                    "optimizer_state_mb": state_bytes(built[v][2]) / 2**20,
                    "step_time_s": statistics.median(times[v]), "peak_memory_mb": peaks[v],
                    "forward_s": statistics.median(p[0] for p in phases[v]),
                    "backward_s": statistics.median(p[1] for p in phases[v]),
                    "optimizer_s": statistics.median(p[2] for p in phases[v])} for v in VARIANTS}
    out = {"model": {k: getattr(a, k) for k in ("shape", "layers", "hidden", "intermediate", "vocab", "heads",
                                                 "kv_heads", "tied", "batch", "seq")},
           "neurons": neuron_summary(a),
           "device": str(a.device), "threads": torch.get_num_threads(), "rounds": a.rounds, "variants": variants,
           "vs_grad_mask": {}}
    for stage in ("stage1", "stage2"):
        for key, value in ratios(variants[stage], variants["full"]).items():
            out[f"{stage}_{key}"] = value
        for key, value in ratios(variants[stage], variants[f"grad_mask_{stage}"]).items():
            out["vs_grad_mask"][f"{stage}_{key}"] = value
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="", help="write the results here as JSON")
    p.add_argument("--shape", default="", choices=["", *SHAPES], help="a real model's config (sets the sizes)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", dest="kv_heads", type=int, default=8)
    p.add_argument("--tied", action="store_true", help="tie input and output embeddings")
    p.add_argument("--rope-theta", dest="rope_theta", type=float, default=10000.0)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--n-relevant", dest="n_relevant", type=int, default=100)
    p.add_argument("--n-irrelevant", dest="n_irrelevant", type=int, default=100)
    p.add_argument("--n-shared", dest="n_shared", type=int, default=30)
    p.add_argument("--targets", type=int, default=3, help="target layers (the last ones)")
    p.add_argument("--map", default="", help="a mined neuron map (folder or file) for the model's shape, instead of "
                                             "random neurons over all layers (the backward stops at its lowest layer)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    a = p.parse_args()
    for key, value in SHAPES.get(a.shape, {}).items():
        setattr(a, key, value)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    a.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = run(a)
    for v, row in result["variants"].items():
        print(f"{v:18s} trainable {row['trainable_params']:>11,}  optimizer state {row['optimizer_state_mb']:8.2f} MB"
              f"  step {row['step_time_s'] * 1000:8.1f} ms (fwd {row['forward_s'] * 1000:.0f} bwd "
              f"{row['backward_s'] * 1000:.0f} opt {row['optimizer_s'] * 1000:.0f})  peak +{row['peak_memory_mb']:8.1f} MB")
    for key in ("optimizer_state_ratio", "step_time_ratio", "peak_memory_ratio"):
        for stage in ("stage1", "stage2"):
            print(f"{stage}_{key}: {result[f'{stage}_{key}']:.4f} vs full FT, "
                  f"{result['vs_grad_mask'][f'{stage}_{key}']:.4f} vs grad mask")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
