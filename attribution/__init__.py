"""Attribution: integrated gradients of every FFN neuron, mined into a neuron map (docs/DESIGN.md §2).

- ``ig`` — ``integrated_gradients(model, patcher, IGInput, IGOptions, algorithm="fast"|"reference")``;
  ``ig_fast`` (exact, cached last-position rows) and ``ig_reference`` (naive), sharing ``ig_common``;
  ``targets`` (the registry of attribution targets: ``yes_prob``, ``yes_no_margin``, ``answer_logprob``,
  ``answer_seq_logprob``).
- ``examples`` — records -> relevant / irrelevant prompts (with the query-only baseline), bad input counted.
- ``stats`` — per-rank statistics, atomic resumable shards, cross-rank reduction (SUM) into ``NeuronStats``.
- ``selection`` — per-example top-k, the three groups, target layers, and the neuron map built from them
  (``NeuronMap`` itself is the shared contract in ``neurorit/neuron_map.py``).
- ``plot`` — picture, TensorBoard image, text summary.
- ``diagnose`` — ``neurorit-diagnose``: a forward-only separation probe of every target on the mining split, the
  rule of ``mining.target auto`` and a one-line verdict.
- ``mine`` — the entry point: ``python attribution/mine.py --config X`` or under ``deepspeed`` / ``torchrun``.
"""
