"""Run under ``deepspeed --num_gpus 2``: ZeRO-3 load, neuron deltas trained a few steps, export on rank 0.

For each ``--model family=dir`` pair: load the checkpoint partitioned, patch it, add deltas, deactivate a few
neurons, train 3 AdamW steps, record the patched model's logits on fixed tokens, ``export_hf`` with the
deactivation folded, then ``merge_into_weights`` in place and record the logits again. Rank 0 writes ``<out>/<family>/`` (the checkpoint) and ``<out>/<family>.logits.pt``.
"""
import argparse
import os

import deepspeed
import torch

from model_patches import export_hf, load_causal_lm, merge_into_weights, patch_model
from neurorit import parallel
from tests.support.models import tiny_inputs  # the repository root is on PYTHONPATH (tests.support.ranks)

NEURONS = {0: [1, 200, 300], 1: [0, 64, 511]}  # valid for dense (d_ff 512 = 4 x 128 MoE too)


def run(family: str, model_dir: str, out: str) -> None:
    cfg = parallel.ds_config_for(3, batch_size=2, micro_batch_size=1)
    model = load_causal_lm(model_dir, attn_implementation="eager", ds_config=cfg)
    model.requires_grad_(False)
    patcher = patch_model(model)
    width = patcher.intermediate_size
    params = patcher.add_neuron_deltas({l: torch.tensor([n % width for n in ids]) for l, ids in NEURONS.items()})
    patcher.set_deactivated({1: torch.tensor([5, width - 2])})
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
    x = tiny_inputs(batch=1, seq=8, seed=parallel.rank())
    for _ in range(3):
        logits = engine(x).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        engine.backward(loss)
        engine.step()
    engine.eval()
    probe = tiny_inputs(batch=2, seq=7, seed=11)
    with torch.no_grad():
        want = engine(probe).logits
    export_hf(engine, os.path.join(out, family), fold_deactivation=True, max_shard_size="100KB")
    merge_into_weights(engine, fold_deactivation=True)  # in place, partitioned weights
    with torch.no_grad():
        merged = engine(probe).logits
    if parallel.is_main():
        torch.save({"tokens": probe, "logits": want, "merged": merged}, os.path.join(out, f"{family}.logits.pt"))
    parallel.barrier()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", required=True, help="family=checkpoint_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    parallel.init_distributed(args.local_rank)
    for item in args.model:
        family, model_dir = item.split("=", 1)
        run(family, model_dir, args.out)


if __name__ == "__main__":
    main()
