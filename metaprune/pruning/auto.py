"""``method="auto"``: a deterministic rule that picks the method the evidence supports.

The rule (measured on held-out ``digits`` ResNet-20 and VGG-11 models; figures and
commands in ``benchmarks/RESULTS.md``, section "Baselines and defaults"):

1. ``before_pruning.epochs >= 1`` -> ``group-l2-sl``: sparse training with ``reg`` chosen
   on validation (``SparseTraining(reg="auto")``) matched or beat plain group-L2 (with
   the same normaliser choice) at the budgets measured (1, 2, 5 and 10 epochs) on both
   families, most clearly at 3-4x; the shipped metanetwork was behind both. ``reg`` is
   chosen by validation accuracy *at the target*, inside the budget (successive halving,
   :mod:`metaprune.pruning.sparse`).
2. ``before_pruning.epochs == 0`` -> ``group-l2``: with no epochs sparse training cannot
   act.

In both cases the pipeline then picks the criterion on validation at the target among
group-L2 with each normaliser, group-L2 per MAC (``group-l2-macs``) and the data-aware
``taylor`` and ``hessian``
(:mod:`metaprune.pruning.choose`; the report's ``method_choice.criterion`` and
``stages.prune.criterion_search`` say what won).

``metanet`` is never chosen automatically (it lost to rule 1 on its own family and has
no metanetwork for other families); request it explicitly. The rule reads only the
config, never data, so the same config always resolves the same way.
"""

from __future__ import annotations

import dataclasses

from metaprune.pruning.config import PruneConfig

__all__ = ["MethodChoice", "resolve_method"]


@dataclasses.dataclass(frozen=True)
class MethodChoice:
    """The method a job runs, and why (``requested`` is what the config said)."""

    method: str
    requested: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def resolve_method(config: PruneConfig) -> MethodChoice:
    """The concrete method for ``config`` (``config.method`` itself unless it is ``"auto"``)."""
    if config.method != "auto":
        return MethodChoice(config.method, config.method, "requested explicitly")
    epochs = config.before_pruning.epochs
    if epochs >= 1:
        reg = config.sparse.reg
        how = (
            "reg chosen by validation accuracy at the target, trials inside the budget"
            if reg == "auto"
            else f"reg={reg:g}"
        )
        return MethodChoice(
            "group-l2-sl", "auto",
            f"before_pruning has {epochs} epoch(s): sparse training ({how}) matched or beat "
            "plain group-L2 and the metanetwork on held-out ResNet-20 and VGG-11 models "
            "(benchmarks/RESULTS.md)",
        )  # fmt: skip
    norm = config.importance.normalizer
    how = (
        "the criterion (group-L2 with each normaliser, group-L2 per MAC, taylor, hessian) "
        "chosen by validation "
        "accuracy at the target" if norm == "auto" else f"group-L2 with the {norm!r} normaliser"
    )  # fmt: skip
    return MethodChoice(
        "group-l2", "auto",
        f"before_pruning has 0 epochs, so sparse training cannot act; {how}",
    )  # fmt: skip
