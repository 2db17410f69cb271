"""Test support, imported as ``tests.support.<module>`` by the tests and by the scripts they launch as ranks (those
get the repository root on ``PYTHONPATH`` from ``run_ranks``). No test imports another test.

- ``models``: tiny random causal LMs of every family, token inputs, word-level tokenizers (no hub, no network).
- ``ranks``: a free port, N real ranks of a script under the deepspeed / torchrun launcher, a world of one.
- ``workspaces``: folders a stage reads (a model with its tokenizer, records, a neuron map, an experiment YAML) for
  mining, training and evaluation, and the TensorBoard scalars a stage wrote.

``tests/conftest.py`` turns the repeated ones into fixtures: ``free_port``, ``run_ranks``, ``single_rank_env``,
``tiny_model``, ``word_tokenizer``.
"""
