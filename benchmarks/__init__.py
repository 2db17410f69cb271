"""Benchmarks that write ordinary JSONL records (docs/DESIGN.md §4): ``embedded`` (the synthetic world the
embedded model was trained on) and, for real models, ``english``. They sit above the stages (the English one
probes the base model through evaluation's generation); no stage imports them."""
