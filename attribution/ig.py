"""One entry to integrated gradients: ``integrated_gradients(model, patcher, inp, options, algorithm)``.

``fast`` (default) is the exact cached path of ``ig_fast``;
``reference`` the naive full-sequence algorithm of ``ig_reference`` (every target). Both return an ``IGResult``
with the same numbers up to float rounding (``mining.algorithm``). ``ig_fast`` is imported on first use: it
registers an attention implementation with transformers, whose import (2-4 s) must not delay ``--help`` or a
refused config value.
"""
from __future__ import annotations

from attribution.ig_common import IGInput, IGResult, IGOptions
from attribution.ig_reference import reference_ig

ALGORITHMS = ("fast", "reference")


def integrated_gradients(model, patcher, inp: IGInput, options: IGOptions, algorithm: str = "fast") -> IGResult:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown IG algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    if algorithm == "reference":
        return reference_ig(model, patcher, inp, options)
    from attribution.ig_fast import fast_ig

    return fast_ig(model, patcher, inp, options)
