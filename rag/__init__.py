"""Evaluation, the last stage: generation, scoring under every retrieval setting, and the report.

Loads only plain Hugging Face checkpoints and imports no other stage (``attribution``, ``train``)."""
