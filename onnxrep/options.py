"""What one run does: :class:`Options`, the one value the API, the CLI and batch mode share.

The API takes it (``optimize(model, options)``) or its fields as keyword arguments
(``optimize(model, verify=False)``); the CLI names each click option's parameter
after its field, so a new option is a field here plus its click line; batch mode
pickles it to its worker processes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnxrep.verify.tolerance import Tolerance


@dataclass(frozen=True)
class Options:
    only: tuple[str, ...] = ()  # names of the rules to run (all when empty)
    skip: tuple[str, ...] = ()  # names of the rules not to run
    verify: bool = True  # check the result in onnxruntime, rolling back what fails
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # verification sizes, by input
    rtol: float | None = None  # fixed tolerances of the outputs instead of the noise floor (Tolerance)
    atol: float | None = None
    seed: int = 0  # of the random verification inputs
    inputs: str | os.PathLike | Mapping[str, Any] | None = None  # real inputs: name → array, or a directory

    def __post_init__(self):
        object.__setattr__(self, "only", tuple(self.only))
        object.__setattr__(self, "skip", tuple(self.skip))
        object.__setattr__(self, "input_shapes", {k: tuple(v) for k, v in dict(self.input_shapes).items()})
        self.tolerance  # noqa: B018 (a negative or NaN rtol/atol is refused here, before any work)

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(rtol=self.rtol, atol=self.atol)

    @classmethod
    def take(cls, params: dict) -> Options:
        """The options among ``params`` (a click command's keyword arguments), removed from it."""
        return cls(**{f.name: params.pop(f.name) for f in dataclasses.fields(cls) if f.name in params})
