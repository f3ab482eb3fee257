"""Model zoos: many trained, lightly pruned networks of one architecture on one dataset.

A zoo is the training data of a metanetwork (METHOD.md section 4). Build one with
``metaprune zoo build --root DIR`` or :func:`build_zoo`; read it with :meth:`Zoo.open`.

On-disk format (``format_version`` 1)::

    DIR/
      zoo.json                      the index (below)
      members/NNNN.safetensors      member NNNN: a metaprune safe checkpoint (weights +
                                    JSON ArchSpec with the pruned channel plan;
                                    metaprune.checkpoint.load rebuilds it, no pickle)
      members/NNNN.metrics.json     its metrics, written last: the member is finished
                                    exactly when this file exists
      members/NNNN.K.safetensors    with ``snapshots: K > 1`` (issue 21): snapshot k of
      members/NNNN.K.metrics.json   training run NNNN (``snapshot_epoch``, ``run``), written
                                    before the run's final member; the run is finished
                                    when all its members are

``zoo.json`` holds ``format_version``, ``config`` (:meth:`ZooConfig.to_dict`: architecture,
dataset and data split seed, training / pruning / fine-tune recipe, seeds), ``members``
(``name``, ``seed``, relative ``checkpoint`` and ``metrics`` paths, ``finished``),
``split`` (``meta_train`` and ``meta_val`` member names, seeded by ``split_seed``) and
``complete``; with snapshots each member also names its ``run``, and the split is drawn
over runs (a run's members are all on one side). A metrics file holds ``name``, ``seed``, ``val_accuracy``,
``test_accuracy`` (reported, never used for selection), ``macs``, ``params``,
``base_macs``, ``base_params``, ``macs_speedup`` (base / pruned), the accuracies after
training and right after pruning, ``seconds`` and the ``recipe`` (the zoo config).

Building is resumable: finished runs are skipped and an interrupted run (a member without
metrics) is rebuilt. Files are written to a temporary name and renamed, so a
crash never leaves a half-written file under its real name.
"""

from .build import build_zoo
from .config import ZOO_FORMAT_VERSION, ZooConfig
from .index import INDEX_NAME, Zoo, ZooError, meta_split
from .member import build_member, member_spec, task_splits
from .tiny import tiny_zoo_config

__all__ = [
    "INDEX_NAME",
    "ZOO_FORMAT_VERSION",
    "Zoo",
    "ZooConfig",
    "ZooError",
    "build_member",
    "build_zoo",
    "member_spec",
    "meta_split",
    "task_splits",
    "tiny_zoo_config",
]
