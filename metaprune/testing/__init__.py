"""Reusable helpers for tests and benchmarks (tiny networks, permutations)."""

from .nets import (
    MixedKernels,
    TinyConvNet,
    TinyMLP,
    TinyResidual,
    permute_hidden_conv,
    randomize_norms,
)

__all__ = [
    "MixedKernels",
    "TinyConvNet",
    "TinyMLP",
    "TinyResidual",
    "permute_hidden_conv",
    "randomize_norms",
]
