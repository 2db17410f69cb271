"""Benchmarks that write ordinary JSONL records (docs/DESIGN.md §4): ``embedded`` (the synthetic world the
embedded model was trained on) and, for real models, ``english``. They import only ``neurorit`` (the record
schema and prompts); no stage imports them."""
