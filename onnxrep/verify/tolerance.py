"""How close the optimized model must be to the original: one value, :class:`Tolerance`.

- Local checks (every rewritten tensor, on the original's own inputs): within
  ``rounding_factor`` units of roundoff of the tensor's magnitude (see
  onnxrep.algebra.rounding.ROUNDING_FACTOR for why 64).
- Outputs: within ``rounding_factor`` roundoffs of their largest value, else
  within ``noise_multiple`` times the model's own noise floor (how far the
  original's outputs move when every layer is rounded once more); or, when the
  user fixes ``rtol``/``atol``, ``|opt − ref| ≤ atol · max|ref| + rtol · |ref|``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from onnxrep.algebra.rounding import ROUNDING_FACTOR

#: Outputs may differ from the original's by this many times the model's noise floor. An exact
#: re-parameterization changes every merged layer by about one rounding (its weights rounded once,
#: its sums in another order), which is what the noise run does to every layer at once; the two
#: move the outputs by amounts of the same order but independent signs. Measured (2026-12-03) on
#: the authors' deploy twins against their training graphs (35 fixtures, 30 timm exports, a
#: 32-block MobileOne stack) the ratio stays at or below 2.0; 8 leaves a margin of 4, and a wrong
#: rewrite the local checks miss (wiring, not rounding) errs by orders of magnitude more.
NOISE_MULTIPLE = 8.0


class Bound(enum.Enum):
    """What the outputs were held to."""

    ROUNDING = "rounding"  # their own rounding
    NOISE_FLOOR = "noise floor"  # NOISE_MULTIPLE × the noise floor
    FIXED = "fixed"  # the user's rtol/atol


@dataclass(frozen=True)
class Tolerance:
    rounding_factor: float = ROUNDING_FACTOR  # local checks, and the outputs' own rounding
    noise_multiple: float = NOISE_MULTIPLE
    rtol: float | None = None  # either given: the outputs are held to rtol/atol instead
    atol: float | None = None

    def __post_init__(self):
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not value >= 0:  # NaN too
                raise ValueError(f"{name} must be a number ≥ 0, not {value}")

    @property
    def fixed(self) -> bool:
        return self.rtol is not None or self.atol is not None

    def describe(self, bound: Bound) -> str:
        """The bound as the report and the JSON name it."""
        return f"rtol {self.rtol or 0:g}, atol {self.atol or 0:g}" if bound is Bound.FIXED else bound.value


#: The tolerance when the user fixes none.
DEFAULT = Tolerance()
