"""Custom ops of metaprune, registered with ``torch.library`` under ``metaprune::``.

Each op has a pure-torch reference (the fallback on any device, and the ground truth of
the parity tests) and a fused kernel: C++ on CPU (built on first use by the system
compiler, see :mod:`cuda_ops.native`). :func:`use_reference` (or
``METAPRUNE_FORCE_REFERENCE=1``) forces the reference.
"""

from .meta_blocks import TABLE_COLUMNS, meta_blocks, native_available, use_reference

__all__ = ["meta_blocks", "use_reference", "native_available", "TABLE_COLUMNS"]
