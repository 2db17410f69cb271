"""Benchmark the patched FFN forward: time ratio patched / unpatched for idle, deactivation and neuron deltas.

One process, one random Llama (>= 8 layers, width 512), three copies with the same weights: plain, patched
(idle, then 1,000 deactivated neurons), patched with deltas on 230 neurons. Forwards are interleaved (the order
rotates every repeat); each ratio is the median over repeats of (case time / unpatched time in that repeat).
Times are this thread's CPU time by default (``--clock wall`` for wall time): with one torch thread all work
runs on it, and CPU time ignores the time other jobs on a shared machine take the core away.
Targets: idle <= 1.05, the others <= 1.15.

    .venv/bin/python scripts/bench_patches.py --json bench_patches.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import transformers as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model_patches import patch_model  # noqa: E402


def build(args) -> tf.PreTrainedModel:
    cfg = tf.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=1024)
    torch.manual_seed(0)
    return tf.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").float().eval()


def spread(total: int, layers: int, width: int, seed: int) -> dict[int, torch.Tensor]:
    """``total`` distinct random (layer, neuron) pairs, grouped by layer."""
    gen = torch.Generator().manual_seed(seed)
    flat = torch.randperm(layers * width, generator=gen)[:total]
    return {l: flat[flat // width == l] % width for l in range(layers) if (flat // width == l).any()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    plain, patched, with_deltas = build(args), build(args), build(args)
    patcher = patch_model(patched)
    dead = spread(1000, args.layers, args.intermediate, seed=1)
    delta_patcher = patch_model(with_deltas)
    for p in delta_patcher.add_neuron_deltas(spread(230, args.layers, args.intermediate, seed=2)):
        torch.nn.init.normal_(p, std=0.01)
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))

    def idle():
        patcher.clear_deactivated()
        return patched

    def deactivated():
        patcher.set_deactivated(dead)
        return patched

    cases = {"unpatched": lambda: plain, "idle": idle, "deactivate": deactivated, "deltas": lambda: with_deltas}
    clock = time.thread_time if args.clock == "cpu" and args.threads == 1 else time.perf_counter
    times = {name: [] for name in cases}
    with torch.no_grad():
        for model in (plain, idle(), deactivated(), with_deltas):  # warm-up
            model(x)
        names = list(cases)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                model = cases[name]()
                start = clock()
                model(x)
                times[name].append(clock() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {f"{name}_ratio": statistics.median(t / u for t, u in zip(times[name], times["unpatched"]))
              for name in ("idle", "deactivate", "deltas")}
    result.update({f"{name}_ratio_of_medians": median[name] / median["unpatched"]
                   for name in ("idle", "deactivate", "deltas")})
    result.update({f"{name}_median_ms": 1000 * m for name, m in median.items()})
    result["setup"] = {**vars(args), "clock_used": clock.__name__, "deactivated_neurons": sum(v.numel() for v in dead.values()),
                       "delta_neurons": sum(v[0].numel() for v in delta_patcher.neuron_deltas().values()),
                       "torch": torch.__version__, "transformers": tf.__version__}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
