"""Float rounding: what "equal to the rounding" means, for the rules and for verification alike.

One number, ROUNDING_FACTOR, says how many units of roundoff of a magnitude two
computations of one exact value may differ by. Verification's local checks use it
(``|rewritten − original| ≤ ROUNDING_FACTOR · u · magnitude``, see
onnxrep.verify.tolerance), and so do rules that compare a value an exporter
computed with the one our algebra computes (fold_bias_pad: a BatchNorm's shift
written into a padding border).
"""

from __future__ import annotations

import numpy as np

#: Error allowed per element, in units of roundoff of the magnitude ``|W| ⊛ |x| + |b|``.
#: Both sides round: the original's branches (each a sum of K terms, then a BN
#: scale and the join's adds) and the merged layer (weights rounded once from
#: float64, then one sum of K terms). Recursive or blocked summation of K terms
#: errs by at most K·u·magnitude, but that worst case needs every partial sum to
#: reach the full magnitude; with terms of mixed signs the errors behave like a
#: random walk of size ~u·magnitude (Higham & Mary, "A new approach to
#: probabilistic rounding error analysis", SISC 2019), and the largest of
#: millions of such elements stays within a few standard deviations. The
#: magnitude is the merged layer's plus, where that alone does not suffice, the
#: original's (its branches' terms can cancel in the merge: opposite BN shifts).
#: Measured (2026-12-03): the largest error over every element of every rewritten
#: tensor is 0.081 of this bound (5.2 u·magnitude) across the 35 fixtures, the
#: samples and 30 timm exports of 15 families at 128–224 px; RepVGG-B3 at 224 px 0.12.
#: So 64 leaves a margin of 8–12. A wrong merge errs by far more: a tap shifted
#: or a bias dropped by a whole term (~|w·x|), a BatchNorm epsilon mis-applied
#: (1e-3 for 1e-5) by ~5e-4·|y| ≈ 5e-4·magnitude/√K: 2.4e-5 of the magnitude at
#: K = 576, against 64·u = 3.8e-6 (tests/test_verify.py has each of them).
ROUNDING_FACTOR = 64.0

#: Unit roundoff (half an ulp at 1) of each float type.
UNIT_ROUNDOFF = {
    np.dtype(np.float16): 2.0**-11,
    np.dtype(np.float32): 2.0**-24,
    np.dtype(np.float64): 2.0**-53,
}


def unit_roundoff(dtype) -> float:
    """The unit roundoff of a float type; bfloat16 and narrower types count as 8 bits."""
    return UNIT_ROUNDOFF.get(np.dtype(dtype), 2.0**-8)


def agree(value: np.ndarray, expected: np.ndarray, dtype) -> tuple[bool, float]:
    """Whether two computations of one per-channel vector (one an exporter's, one ours) agree to
    the rounding of ``dtype``: ``|value − expected| ≤ ROUNDING_FACTOR · u · (1 + max|expected|)``.
    Returns the verdict and the largest difference."""
    bound = ROUNDING_FACTOR * unit_roundoff(dtype) * (1 + np.abs(expected).max(initial=0))
    gap = float(np.abs(np.asarray(value, np.float64) - expected).max(initial=0))
    return gap <= bound, gap
