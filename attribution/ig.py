"""One entry to integrated gradients: ``integrated_gradients(model, patcher, inp, settings, method)``.

``fast`` (default) is the exact cached path of ``ig_fast``; ``reference`` the naive full-sequence method of
``ig_reference``. Both return an ``IGResult`` with the same numbers up to float rounding.
"""
from __future__ import annotations

from attribution.ig_common import IGInput, IGResult, IGSettings
from attribution.ig_fast import fast_ig
from attribution.ig_reference import reference_ig

METHODS = {"fast": fast_ig, "reference": reference_ig}


def integrated_gradients(model, patcher, inp: IGInput, settings: IGSettings, method: str = "fast") -> IGResult:
    if method not in METHODS:
        raise ValueError(f"unknown IG method {method!r}; use one of {', '.join(METHODS)}")
    return METHODS[method](model, patcher, inp, settings)
