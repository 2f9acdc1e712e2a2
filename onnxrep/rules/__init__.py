"""The rules, as an explicit pipeline: one module per rule, each with one ``RULE``
(onnxrep.rewrite.contract.Rule: the op types it starts from, ``match``, ``build``).
Adding a rule is its module, one line in DEFAULT_RULES, and its test module."""

from __future__ import annotations

from onnxrep.rewrite.contract import Rule
from onnxrep.rules import (
    drop_noop_casts,
    fold_bias_pad,
    fold_concat_affine,
    fold_constant_sums,
    fold_constants,
    fold_conv_affine,
    fold_pad_conv,
    fold_pre_affine,
    fold_reshaped_affine,
    fold_reshapes,
    fold_sequential,
    fold_whole_write,
    merge_concat,
    merge_parallel,
    quantized_branches,
)

#: Order matters within a sweep: folding Conv→BN (and other affines) first turns conv-BN branches into
#: plain Conv branches that merge_parallel can lift.
DEFAULT_RULES: tuple[Rule, ...] = (
    fold_constants.RULE,
    drop_noop_casts.RULE,
    fold_constant_sums.RULE,
    fold_whole_write.RULE,
    fold_pad_conv.RULE,
    fold_conv_affine.RULE,
    fold_concat_affine.RULE,
    fold_reshaped_affine.RULE,
    fold_reshapes.RULE,
    fold_bias_pad.RULE,
    fold_sequential.RULE,
    fold_pre_affine.RULE,
    merge_parallel.RULE,
    merge_concat.RULE,
    quantized_branches.RULE,
)

RULES_BY_NAME = {rule.name: rule for rule in DEFAULT_RULES}
