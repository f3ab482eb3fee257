"""Custom ops of metaprune, registered with ``torch.library`` under ``metaprune::``.

* :func:`meta_blocks`: the edge side of a metanetwork layer over all dense blocks;
* :func:`multi_aggregate`: PyG's mean/std/max/min aggregation from per-node statistics.

Each op has a pure-torch reference (the fallback, and the ground truth of the parity
tests) and fused kernels: C++ for CPU tensors (built on first use by the system compiler,
see :mod:`cuda_ops.native`), Triton for CUDA tensors (``triton_*.py``; :mod:`cuda_ops.dispatch`
decides). :func:`use_reference` (or ``METAPRUNE_FORCE_REFERENCE=1``) forces the references.
"""

from .dispatch import use_reference
from .meta_blocks_op import TABLE_COLUMNS, meta_blocks
from .meta_blocks_op import native_available as _meta_blocks_native
from .multi_aggregate_op import STD_EPS, multi_aggregate
from .multi_aggregate_op import native_available as _multi_aggregate_native

__all__ = [
    "meta_blocks",
    "multi_aggregate",
    "use_reference",
    "native_available",
    "TABLE_COLUMNS",
    "STD_EPS",
]


def native_available() -> bool:
    """Whether every op's C++ kernel is built and loaded (building them if needed)."""
    return _meta_blocks_native() and _multi_aggregate_native()
