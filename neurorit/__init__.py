"""Shared core of neuro-rit, below every stage: the experiment config, user-facing errors, records, prompts,
evaluation settings, metrics, the neuron map, the method registry, the run layout (every file between stages), the
runtime start, the memory model (``neurorit.memory``), and the package that wraps every torch.distributed /
DeepSpeed call (``neurorit.parallel``)."""
