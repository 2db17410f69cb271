"""model_patches: everything that touches Hugging Face modules (docs/DESIGN.md §2-3).

- ``get_ffn_layout(model)``, ``SUPPORTED_ARCHITECTURES``, ``model_fingerprint``: the model's FFN layout object,
  chosen by ``config.model_type`` in the registry (``layout_registry.py``, also ``unwrap``: the model inside an engine) among the layout classes in ``layouts/``
  (each owns its forward, its weight roles and its fold at export; MoE neuron = expert * d_ff + index).
- ``patch_model(model) -> FFNPatcher`` (also ``get_patcher``), ``unpatch_model``: a per-instance patched FFN
  forward. ``FFNPatcher``: ``num_layers``, ``intermediate_size``; ``probe(layers, positions)`` (context, yields
  ``{layer: activations}``); ``set_scale({layer: (rows, alphas, baseline)})`` / ``scaled`` / ``clear_scale``;
  ``set_deactivated({layer: neurons})`` / ``deactivated`` / ``clear_deactivated``;
  ``add_neuron_deltas({layer: neurons}) -> [params]`` / ``neuron_deltas`` / ``remove_neuron_deltas``.
- ``merge_into_weights``, ``export_hf``: fold deltas (and deactivations) and write a plain HF checkpoint.
- ``choose_attn_implementation``, ``load_causal_lm``, ``load_tokenizer``: attention choice and checkpoint loading (ZeRO-3 aware).
- ``compat``: the supported transformers range (``TRANSFORMERS_RANGE``) and the one seam for what changed inside
  it, the KV cache's name (``cache_kwargs(model, cache)``, ``output_cache(out)``, ``cache_layers_kv(cache)``).
"""
from model_patches.layout_registry import SUPPORTED_ARCHITECTURES, get_ffn_layout, model_fingerprint
from model_patches.attention import choose_attn_implementation
from model_patches.export import export_hf, merge_into_weights
from model_patches.loading import load_causal_lm, load_tokenizer
from model_patches.patcher import FFNPatcher, get_patcher, patch_model, unpatch_model

__all__ = ["SUPPORTED_ARCHITECTURES", "FFNPatcher", "choose_attn_implementation", "export_hf",
           "get_ffn_layout", "get_patcher", "load_causal_lm", "load_tokenizer", "merge_into_weights",
           "model_fingerprint", "patch_model", "unpatch_model"]
