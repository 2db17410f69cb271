"""Attribution: integrated gradients of every FFN neuron, mined into a neuron map (DESIGN.md §2).

- ``ig`` — ``integrated_gradients(model, patcher, IGInput, IGSettings, method="fast"|"reference")``;
  ``ig_fast`` (exact, cached last-position rows) and ``ig_reference`` (naive), sharing ``ig_common``;
  ``targets`` (``yes_prob`` / ``answer_logprob``).
- ``examples`` — records -> relevant / irrelevant prompts (with the query-only baseline), bad input counted.
- ``stats`` — per-rank statistics, atomic resumable shards, cross-rank reduction (SUM) into ``NeuronStats``.
- ``selection`` — per-example top-k, the three groups, target layers.
- ``neuron_map`` — ``NeuronMap`` (save / load / check_model / per_layer / hash).
- ``plot`` — picture, TensorBoard image, text summary.
- ``mine`` — the entry point: ``python attribution/mine.py --config X`` or under ``deepspeed`` / ``torchrun``.
"""
