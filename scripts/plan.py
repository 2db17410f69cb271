#!/usr/bin/env python3
"""Memory planner: per-GPU memory of every Neuro-RIT phase on N nodes x G GPUs, from a model config alone.

    python scripts/plan.py --model Llama-3-70B --nodes 4 --gpus-per-node 8
    python scripts/plan.py --model Llama-3-70B --nodes 1 --gpus-per-node 8 --offload
    python scripts/plan.py --model path/to/checkpoint_or_config.json --nodes 2 --gpus-per-node 4 --json

The model and what it counts: ``neurorit/memory.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from neurorit.memory import (REPO, Options, PlanError, buckets_from_ds_config,  # noqa: E402
                             bundled_models, plan, report, resolve_config, shape_from_config)


def build_options(args: argparse.Namespace) -> Options:
    """Options from the command line, bucket sizes from the ds_config; a PlanError for impossible values."""
    ds_path = args.ds_config or os.path.join(REPO, "ds_configs", "zero3_offload.json" if args.offload else "zero3.json")
    buckets = buckets_from_ds_config(ds_path) if os.path.isfile(ds_path) else {}
    o = Options(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu_gib=args.gpu_gib, reserve_gib=args.reserve_gib,
        offload=args.offload, mining_seq_len=args.mining_seq_len, seq_len=args.seq_len,
        stage2_label_tokens=args.stage2_label_tokens, micro_batch=args.micro_batch, chunk_rows=args.chunk_rows,
        steps=args.steps, n_relevant=args.n_relevant,
        n_irrelevant=args.n_irrelevant, n_shared=args.n_shared, target_layers=args.target_layers,
        gradient_checkpointing=args.gradient_checkpointing, **buckets,
    )
    for key in ("nodes", "gpus_per_node", "mining_seq_len", "seq_len", "stage2_label_tokens", "micro_batch",
                "chunk_rows", "steps"):
        if getattr(o, key) < 1:
            raise PlanError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(o, key)}")
    if o.gpu_gib <= o.reserve_gib:
        raise PlanError(f"--gpu-gib {o.gpu_gib:g} must exceed --reserve-gib {o.reserve_gib:g}")
    return o


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Bundled models: " + ", ".join(bundled_models()))
    ap.add_argument("--model", required=True, help="bundled name, checkpoint directory, or config.json")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--offload", action="store_true", help="ZeRO-3 with CPU offload of parameters and optimizer")
    ap.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU (default 80)")
    ap.add_argument("--reserve-gib", type=float, default=4.0, help="CUDA context, NCCL, fragmentation (default 4)")
    ap.add_argument("--ds-config", default="", help="read bucket sizes from this JSON (default ds_configs/zero3*.json)")
    ap.add_argument("--mining-seq-len", type=int, default=512, help="mining prompt tokens (one passage; default 512)")
    ap.add_argument("--seq-len", type=int, default=1024, help="stage sequence length (data.max_length; 1024)")
    ap.add_argument("--stage2-label-tokens", type=int, default=256,
                    help="tokens with a loss in a stage-2 sequence (its evidence and answer; default 256); logits "
                         "exist only there (stage 1: its one end token)")
    ap.add_argument("--micro-batch", type=int, default=1, help="stage micro-batch per GPU (default 1)")
    ap.add_argument("--chunk-rows", type=int, default=64,
                    help="IG rows per chunk (default 64: mining.chunk_rows auto on CPU; on a GPU auto takes the "
                         "largest that fits, printed below)")
    ap.add_argument("--steps", type=int, default=20, help="IG steps (mining.steps; default 20)")
    ap.add_argument("--n-relevant", type=int, default=100)
    ap.add_argument("--n-irrelevant", type=int, default=100)
    ap.add_argument("--n-shared", type=int, default=30)
    ap.add_argument("--target-layers", type=int, default=3)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the numbers (bytes) as JSON")
    ap.add_argument("--deepspeed-table", action="store_true",
                    help="also print DeepSpeed's estimate_zero3_model_states_mem_needs_all_cold table")
    args = ap.parse_args(argv)
    try:
        name, cfg = resolve_config(args.model)
        shape = shape_from_config(name, cfg)
        result = plan(shape, build_options(args))
    except PlanError as err:
        print(f"plan.py: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report(result))
    if args.deepspeed_table:
        from neurorit.parallel import estimator
        estimator.print_zero3_table(result["params"], result["largest_layer_params"], args.gpus_per_node, args.nodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
