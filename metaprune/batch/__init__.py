"""Batch pruning of model zoos: a manifest of checkpoints and targets, run through the executor.

>>> from metaprune.batch import run_batch
>>> outcome = run_batch("zoo.yaml", "out/", workers=2)    # or backend="ray"
>>> outcome.counts
{'succeeded': 6, 'failed': 0, ..., 'total': 6}

Command line: ``metaprune batch run MANIFEST -o OUT/`` and ``metaprune batch status OUT/``.
The manifest format is described in :mod:`metaprune.batch.manifest`; the outputs are
``OUT/<model>/<target>/`` (pruned checkpoint, report, curve plot, ``result.json``),
``OUT/summary.csv``, ``OUT/summary.json``, ``OUT/pareto.png`` and the state ``OUT/batch.json``.
"""

from .manifest import (
    MANIFEST_VERSION,
    BatchTask,
    Manifest,
    ManifestError,
    load_manifest,
    parse_manifest,
)
from .runner import TASK_FN, BatchOutcome, run_batch
from .state import BatchState, is_running
from .task import read_result

__all__ = [
    "MANIFEST_VERSION",
    "TASK_FN",
    "BatchOutcome",
    "BatchState",
    "BatchTask",
    "Manifest",
    "ManifestError",
    "is_running",
    "load_manifest",
    "parse_manifest",
    "read_result",
    "run_batch",
]
