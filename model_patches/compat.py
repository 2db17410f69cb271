"""The one place that knows how the KV cache is named across the supported transformers range (5.17 - 5.x).

transformers 5.24 renamed the KV cache of a model's forward from ``past_key_values=`` to ``cache=`` and the
output field from ``output.past_key_values`` to ``output.cache`` (5.17 - 5.23 have only ``past_key_values``;
5.24 still accepts it with a deprecation warning, announced for removal in 5.40). Everything else this project
touches (``DynamicCache.layers[i].keys / .values``, ``AttentionInterface``, ``config._attn_implementation``,
``logits_to_keep``) is the same over the range. The name is found by feature detection on the model's own
``forward`` signature (remote-code models with either name work too), never by comparing version strings.

A wrong name is not an error in transformers <= 5.23: ``cache=`` disappears into ``**kwargs`` and the forward
silently runs without the cache. ``cache_kwargs`` therefore refuses a forward that names neither.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

# The transformers range this project supports; requirements.txt's transformers line must say the same, and CI
# runs the suite on the oldest (scripts/setup_transformers_env.sh) and the newest release in it.
TRANSFORMERS_RANGE = ">=5.17,<6"
TRANSFORMERS_OLDEST = "5.17.0"
CACHE_NAMES = ("cache", "past_key_values")  # newest first


def _forward_params(model) -> dict:
    try:
        return dict(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {}


def cache_arg_name(model) -> str:
    """``"cache"`` or ``"past_key_values"``: the keyword ``model.forward`` takes the KV cache under."""
    seen, inner = [], model
    while inner is not None and inner not in seen:  # a DeepSpeed engine (.module) or a peft model around it
        seen.append(inner)
        params = _forward_params(inner)
        for name in CACHE_NAMES:
            if name in params:
                return name
        inner = getattr(inner, "module", None) or (inner.get_base_model() if hasattr(inner, "get_base_model")
                                                   else None)
    raise TypeError(f"{type(model).__name__}.forward takes no KV cache argument (none of {', '.join(CACHE_NAMES)}); "
                    f"transformers{TRANSFORMERS_RANGE} is needed")


def cache_kwargs(model, cache: Any) -> dict:
    """``{name: cache}`` to pass the KV cache to ``model(...)`` under the name this transformers uses."""
    return {cache_arg_name(model): cache}


def output_cache(out) -> Optional[Any]:
    """The KV cache a forward returned (``out.cache`` or ``out.past_key_values``), None when it returned none."""
    for name in CACHE_NAMES:
        value = getattr(out, name, None)
        if value is None and isinstance(out, dict):
            value = out.get(name)
        if value is not None:
            return value
    return None


def cache_layers_kv(cache) -> list[tuple[Any, Any]]:
    """``[(keys, values)]`` per decoder layer of a ``DynamicCache`` (``[batch, kv_heads, positions, head_dim]``)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"{type(cache).__name__}: a cache with per-layer .layers[i].keys / .values expected "
                        "(transformers 5.x DynamicCache)")
    return [(layer.keys, layer.values) for layer in layers]
