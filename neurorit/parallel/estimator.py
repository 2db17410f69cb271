"""DeepSpeed's own ZeRO-3 memory estimators, the cross-check of the memory model (``neurorit/memory.py``).

Behind the parallel package's door like every other DeepSpeed call; the memory model works without DeepSpeed and
only reports that the cross-check is missing.
"""
from __future__ import annotations

import contextlib
import io


def zero3_model_states(params: int, largest_layer_params: int, gpus_per_node: int, nodes: int) -> dict:
    """DeepSpeed's per-GPU model-state bytes for the three placements the memory model also counts
    (``frozen_weights``: bf16 shard on the GPU, optimizer offloaded; ``full_finetune``: nothing offloaded;
    ``all_offloaded``). Raises ImportError when DeepSpeed is not importable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as estimate
    kw = dict(num_gpus_per_node=gpus_per_node, num_nodes=nodes)
    return {
        "frozen_weights": estimate(params, largest_layer_params, cpu_offload=True, cpu_offload_params=False, **kw)[1],
        "full_finetune": estimate(params, largest_layer_params, cpu_offload=False, cpu_offload_params=False, **kw)[1],
        "all_offloaded": estimate(params, largest_layer_params, cpu_offload=True, cpu_offload_params=True, **kw)[1],
    }


def print_zero3_table(params: int, largest_layer_params: int, gpus_per_node: int, nodes: int) -> None:
    """Print DeepSpeed's ``estimate_zero3_model_states_mem_needs_all_cold`` table."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    estimate_zero3_model_states_mem_needs_all_cold(total_params=params, largest_layer_params=largest_layer_params,
                                                   num_gpus_per_node=gpus_per_node, num_nodes=nodes)
