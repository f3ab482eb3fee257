"""Weight-space augmentations for meta-training (issue 21).

* :mod:`.channels`: the tensor slices of each pruning group's channels; permutations.
* :mod:`.scaling`: positive per-channel scaling through ReLU / BatchNorm's affine, kept
  only where a check on the network shows it preserves the function.
* :mod:`.noise`: weight noise and edge dropout at small, relative scales.
* :mod:`.mixup`: channel alignment by weight matching, then weight-space MixUp.
* :mod:`.augmenter`: :class:`AugmentConfig` and :class:`Augmenter`, which
  :class:`~metanet.training.MetaPruneModule` applies to each training member.
"""

from .augmenter import AugmentConfig, Augmenter, graph_with
from .channels import ChannelGroup, ChannelSlice, channel_groups, permute
from .mixup import MixupError, align, aligned, mix, mixable
from .noise import edge_dropout, weight_noise
from .scaling import outputs, permutable_groups, same_function, scalable_groups, scale

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "ChannelGroup",
    "ChannelSlice",
    "MixupError",
    "align",
    "aligned",
    "channel_groups",
    "edge_dropout",
    "graph_with",
    "mix",
    "mixable",
    "outputs",
    "permutable_groups",
    "permute",
    "same_function",
    "scalable_groups",
    "scale",
    "weight_noise",
]
