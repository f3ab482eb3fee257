"""Reusable helpers for tests and benchmarks (tiny networks, permutations)."""

from .nets import TinyConvNet, TinyMLP, TinyResidual, permute_hidden_conv, randomize_norms

__all__ = ["TinyConvNet", "TinyMLP", "TinyResidual", "permute_hidden_conv", "randomize_norms"]
