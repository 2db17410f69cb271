"""The supported transformers range (model_patches/compat.py): the installed version is inside it, requirements.txt
says no more than it, and the KV cache is passed and read under the name this version uses.

The same tests run, with nothing skipped, on the oldest supported release (``.venv-tf5.17.0``, made by
scripts/setup_transformers_env.sh: ``past_key_values``) and on the newest (``.venv``: ``cache``).
"""
import os
import re

import pytest
import torch
import transformers
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from model_patches import patch_model
from model_patches.compat import (CACHE_NAMES, TRANSFORMERS_OLDEST, TRANSFORMERS_RANGE, cache_arg_name,
                                  cache_kwargs, cache_layers_kv, output_cache)
from tests.support.models import TINY_FAMILIES, tiny_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirement(name: str) -> SpecifierSet:
    with open(os.path.join(ROOT, "requirements.txt")) as fh:
        for line in fh:
            m = re.match(rf"\s*{name}\s*([<>=!~][^#;]*)", line, re.IGNORECASE)
            if m:
                return SpecifierSet(m.group(1).replace(" ", ""))
    raise AssertionError(f"requirements.txt has no {name} line")


def test_installed_transformers_is_in_the_supported_range():
    assert Version(transformers.__version__) in SpecifierSet(TRANSFORMERS_RANGE), (
        f"transformers {transformers.__version__} is outside the supported {TRANSFORMERS_RANGE}")
    assert Version(TRANSFORMERS_OLDEST) in SpecifierSet(TRANSFORMERS_RANGE)


def test_requirements_range_is_inside_the_supported_range():
    """requirements.txt may be narrower than what compat supports, never wider: its floor is at least
    ``TRANSFORMERS_OLDEST`` and it admits no 6.x."""
    req = _requirement("transformers")
    floors = [Version(s.version) for s in req if s.operator in (">=", "==", "~=", ">")]
    assert floors and min(floors) >= Version(TRANSFORMERS_OLDEST), f"requirements.txt transformers{req}"
    assert Version("6.0") not in req and Version("6.0.0.dev0") not in req


def _reference_and_prefix(model, x):
    with torch.no_grad():
        full = model(x).logits[:, -1]
        prefix = model(x[:, :-1], use_cache=True)
    return full, prefix


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_single_token_over_the_cache_equals_the_full_pass(family, tiny_model):
    """The name compat picks is the one the forward honours: the last token over the cache of the others gives
    the full pass's logits, for every family (each has its own forward)."""
    model, x = tiny_model(family), tiny_inputs(batch=2, seq=6)
    full, prefix = _reference_and_prefix(model, x)
    cache = output_cache(prefix)
    assert cache is not None
    kv = cache_layers_kv(cache)
    assert len(kv) == model.config.num_hidden_layers
    assert kv[0][0].shape[0] == 2 and kv[0][0].shape[2] == 5  # [batch, kv_heads, positions, head_dim]
    with torch.no_grad():
        step = model(x[:, -1:], **cache_kwargs(model, cache)).logits[:, -1]
    assert (full - step).abs().max() < 1e-5


def test_the_detected_name_is_this_versions_and_the_other_is_not_honoured_silently(tiny_model):
    """Why the seam exists: transformers 5.24 took the cache as ``cache=`` (still accepting the old
    ``past_key_values=`` with a deprecation warning); 5.17-5.23 take ``past_key_values=`` and silently drop
    ``cache=`` into ``**kwargs``, running without the cache. The test names what this version does."""
    model, x = tiny_model("llama"), tiny_inputs(batch=1, seq=6)
    name = cache_arg_name(model)
    expected = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"
    assert name == expected, f"transformers {transformers.__version__}: forward takes {name!r}"
    assert isinstance(getattr(transformers.modeling_outputs.CausalLMOutputWithPast(), name, "absent"),
                      type(None))  # the output field has the same name
    full, _ = _reference_and_prefix(model, x)
    other = next(n for n in CACHE_NAMES if n != name)
    with torch.no_grad():
        cache = output_cache(model(x[:, :-1], use_cache=True))
        step = model(x[:, -1:], **{other: cache}).logits[:, -1]
    honoured = bool((full - step).abs().max() < 1e-5)
    if name == "past_key_values":  # the hazard compat guards against: cache= ignored, no error, wrong logits
        assert not honoured, f"transformers {transformers.__version__} honours cache= now: update compat's docstring"
    else:  # 5.24 - 5.39 still honour the old name (deprecated); its announced removal is 5.40
        assert honoured or Version(transformers.__version__) >= Version("5.40")


def test_wrapped_models_and_models_without_a_cache_argument():
    class Plain(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None):
            return input_ids

    class New(torch.nn.Module):
        def forward(self, input_ids, cache=None):
            return input_ids

    class Engine(torch.nn.Module):  # DeepSpeed's engine: forward(*args, **kwargs) around .module
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    class NoCache(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            return input_ids

    assert cache_arg_name(Plain()) == "past_key_values" and cache_arg_name(New()) == "cache"
    assert cache_kwargs(Engine(New()), "c") == {"cache": "c"}
    assert cache_arg_name(Engine(Plain())) == "past_key_values"
    with pytest.raises(TypeError, match="no KV cache argument"):
        cache_arg_name(Engine(NoCache()))
    assert output_cache(object()) is None
    assert output_cache({"past_key_values": "p"}) == "p"


def test_patched_model_fast_ig_reads_the_cache(tiny_model):
    """The fast IG's prefill reads the cache through compat on this version (an unread cache would make rows
    attend to themselves only and is refused rather than computed)."""
    from attribution.ig_fast import _prefix_kv

    model, x = tiny_model("qwen2"), tiny_inputs(batch=1, seq=7)
    patch_model(model)
    with torch.no_grad():
        prefix = _prefix_kv(output_cache(model(x, use_cache=True, logits_to_keep=1)))
    assert sorted(prefix) == [0, 1] and prefix[0][0].shape[1] == 7
    with pytest.raises(RuntimeError, match="no KV cache"):
        _prefix_kv(None)
