"""Attribution: integrated gradients of every FFN neuron, mined into a neuron map (docs/DESIGN.md §2).

- ``ig`` — ``integrated_gradients(model, patcher, IGInput, IGSettings, method="fast"|"reference")``;
  ``ig_fast`` (exact, cached last-position rows) and ``ig_reference`` (naive), sharing ``ig_common``;
  ``targets`` (``yes_prob`` / ``answer_logprob``).
- ``examples`` — records -> relevant / irrelevant prompts (with the query-only baseline), bad input counted.
- ``stats`` — per-rank statistics, atomic resumable shards, cross-rank reduction (SUM) into ``NeuronStats``.
- ``selection`` — per-example top-k, the three groups, target layers, and the neuron map built from them
  (``NeuronMap`` itself is the shared contract in ``neurorit/neuron_map.py``).
- ``plot`` — picture, TensorBoard image, text summary.
- ``mine`` — the entry point: ``python attribution/mine.py --config X`` or under ``deepspeed`` / ``torchrun``.
"""
