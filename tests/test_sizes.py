"""Which taps of a conv meet data at an input size (onnxrep/verify/sizes.py), and the sizes chosen."""

from __future__ import annotations

import itertools
from pathlib import Path

import onnx

import onnxrep
from onnxrep.verify.sizes import Window, _axis_exercised

MODELS = Path(__file__).resolve().parent.parent / "models"


def _brute_force(n: int, k: int, s: int, d: int, begin: int, end: int) -> bool:
    """Every tap reads a row inside the input at some output position, by enumeration."""
    outputs = (n + begin + end - d * (k - 1) - 1) // s + 1
    hit = {j for o in range(max(outputs, 0)) for j in range(k) if 0 <= o * s - begin + j * d < n}
    return hit == set(range(k))


def test_taps_meeting_data_match_enumeration():
    for n, k, s, d, begin, end in itertools.product(range(1, 13), range(1, 8), (1, 2, 3), (1, 2, 3),
                                                    range(0, 5), range(0, 5)):
        if n + begin + end >= d * (k - 1) + 1:  # a valid conv: at least one output
            assert _axis_exercised(n, k, s, d, begin, end) == _brute_force(n, k, s, d, begin, end), \
                (n, k, s, d, begin, end)


def test_a_7x7_at_a_1x1_level_meets_data_with_its_centre_tap_only():
    window = Window("conv", "y", "x", (7, 7), (1, 1), (1, 1), (3, 3, 3, 3))
    assert window.exercised((1, 16, 1, 1)) is False and window.exercised((2, 16, 3, 5)) is False
    assert window.exercised((1, 16, 4, 4)) is True and window.smallest_input() == (4, 4)
    assert window.exercised((1, 16, None, 4)) is None  # not known
    strided = Window("conv", "y", "x", (3, 3), (2, 2), (1, 1), (1, 1, 1, 1))
    assert strided.smallest_input() == (3, 3)  # at 2, the one output reads the top-left pad
    same = Window("conv", "y", "x", (5, 5), (1, 1), (1, 1), (0, 0, 0, 0), "SAME_UPPER")
    assert same.smallest_input() == (3, 3)


def test_static_models_are_checked_at_their_sizes_with_no_size_added():
    _, report = onnxrep.optimize(onnx.load(MODELS / "repvgg.train.onnx"))
    v = report.verification
    assert v.sizes == ({"input": (1, 3, 32, 32)}, {"input": (2, 3, 32, 32)}) and v.unexercised == ()
    assert v.size_notes == ("default", "second size")
