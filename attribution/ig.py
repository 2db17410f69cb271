"""One entry to integrated gradients: ``integrated_gradients(model, patcher, inp, options, algorithm)``.

``fast`` (default) is the exact cached path of ``ig_fast`` (targets read at the last prompt position only);
``reference`` the naive full-sequence algorithm of ``ig_reference`` (every target). Both return an ``IGResult``
with the same numbers up to float rounding (``mining.algorithm``).
"""
from __future__ import annotations

from attribution.ig_common import IGInput, IGResult, IGOptions
from attribution.ig_fast import fast_ig
from attribution.ig_reference import reference_ig

ALGORITHMS = {"fast": fast_ig, "reference": reference_ig}


def integrated_gradients(model, patcher, inp: IGInput, options: IGOptions, algorithm: str = "fast") -> IGResult:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown IG algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[algorithm](model, patcher, inp, options)
