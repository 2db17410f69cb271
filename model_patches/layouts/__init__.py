"""FFN layout classes: one module per way a model family stores its FFN neurons (docs/DESIGN.md §2-3).

``base.py`` holds the contract (``FFNLayout``) and the per-layer state a forward reads (``LayerControl``);
``gated.py``, ``fused.py``, ``moe.py`` are the layouts. Which model type uses which layout is decided in one
place, the registry in ``model_patches/layout_registry.py``. Nothing is re-exported here, so a new layout is one new
module plus its registry line.
"""
