"""Run ``rag.evaluate`` under a real launcher (``deepspeed --num_gpus 2`` / ``torchrun``) and check that every
rank returned the same result; arguments are passed to ``rag.evaluate`` unchanged.

    deepspeed --num_gpus 2 tests/dist_scripts/eval_two_ranks.py --config X --model M --name two_ranks
    torchrun --nproc_per_node 2 tests/dist_scripts/eval_two_ranks.py --config X --model M --name two_ranks
"""
import json
import sys

import torch

torch.set_num_threads(1)

from neurorit import parallel  # noqa: E402
from rag import evaluate  # noqa: E402


def main() -> None:
    result = evaluate.main(sys.argv[1:])
    every = parallel.all_gather_objects(json.dumps(result, sort_keys=True))
    assert all(r == every[0] for r in every), "ranks disagree on the gathered result"
    assert parallel.world_size() == 2, f"expected 2 ranks, got {parallel.world_size()}"
    if parallel.is_main():
        print(f"EVAL_TWO_RANKS_OK world_size={parallel.world_size()}")
    parallel.barrier()
    parallel.shutdown()


if __name__ == "__main__":
    main()
