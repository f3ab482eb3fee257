"""``method="auto"``: a deterministic rule that picks the method the evidence supports.

The rule (measured on held-out ``digits`` ResNet-20 and VGG-11 models; figures and
commands in ``benchmarks/RESULTS.md``, section "Baselines and defaults"):

1. ``before_pruning.epochs >= 1`` -> ``growing-reg`` (with ``sparse.reg`` left at
   ``"auto"``): a dry prune to the target decides which channels go, and only those are
   penalised, with an L2 coefficient growing over the budget
   (:mod:`metaprune.pruning.growing_reg`). It replaced ``group-l2-sl`` with ``reg`` chosen
   by the proxy (issue 20, session 10, ``benchmarks/RESULTS.md``): on a fitting set's
   validation 88.9 against 83.3 % (2x and 3x, 12 cells), then on held-out ResNet-20,
   ResNet-56 and VGG-19 models ahead in all 16 cells, 94.8 against 90.9 % test on average
   (VGG-19 at 3x: 94.2 against 80.8). A fixed ``sparse.reg`` number still runs
   ``group-l2-sl`` (sparse training matched or beat plain group-L2 on ResNet-20 and VGG-11
   at 1-10 epochs, the first measurements of this rule).
2. ``before_pruning.epochs == 0`` -> ``group-l2``: with no epochs sparse training cannot
   act.

In both cases the pipeline then picks the criterion on validation at the target among
group-L2 with each normaliser, group-L2 per MAC (``group-l2-macs``) and the data-aware
``taylor`` and ``hessian``
(:mod:`metaprune.pruning.choose`; the report's ``method_choice.criterion`` and
``stages.prune.criterion_search`` say what won).

Packages above this one may add evidence (:func:`register_advisor`): ``metanet`` offers
itself at 0 epochs for a model family on which a registered metanetwork has a *winning*
held-out record, and turns ``method="metanet"`` with ``metanet="auto"`` into the strongest
baseline (this rule) where none has one (:mod:`metanet.advisor`). Nothing else picks it.
The rule reads only the config and the model's family (its architecture name), never
data, so the same job always resolves the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from metaprune.pruning.config import PruneConfig

__all__ = ["Advisor", "MethodChoice", "baseline_method", "register_advisor", "resolve_method"]


@dataclasses.dataclass(frozen=True)
class MethodChoice:
    """The method a job runs, and why (``requested`` is what the config said)."""

    method: str
    requested: str
    reason: str
    #: the criterion search also tries the cost- and data-aware criteria (the strongest
    #: baseline, chosen by a rule rather than named by the config)
    data_aware: bool = False

    def to_dict(self) -> dict[str, str | bool]:
        return dataclasses.asdict(self)


#: ``advisor(config, family)``: a choice, or ``None`` to leave it to the next one / the rule
Advisor = Callable[[PruneConfig, str | None], MethodChoice | None]
_ADVISORS: list[Advisor] = []


def register_advisor(advisor: Advisor) -> Advisor:
    """Consult ``advisor`` (in registration order) before the built-in rule."""
    if advisor not in _ADVISORS:
        _ADVISORS.append(advisor)
    return advisor


def resolve_method(
    config: PruneConfig, family: str | None = None, *, advise: bool = True
) -> MethodChoice:
    """The concrete method for ``config`` (``config.method`` itself unless it is ``"auto"``
    or an advisor has evidence for ``family``, the model's architecture name; ``advise``
    False: the config and the rule only, e.g. when the caller hands over a metanetwork)."""
    for advisor in _ADVISORS if advise else ():
        choice = advisor(config, family)
        if choice is not None:
            return choice
    if config.method != "auto":
        return MethodChoice(config.method, config.method, "requested explicitly")
    return baseline_method(config)


def baseline_method(config: PruneConfig) -> MethodChoice:
    """The rule (module doc): the strongest baseline for ``config``'s budget."""
    epochs = config.before_pruning.epochs
    if epochs >= 1 and config.sparse.reg == "auto":
        return MethodChoice(
            "growing-reg", "auto",
            f"before_pruning has {epochs} epoch(s): targeted growing regularisation (the channels a "
            "dry prune to the target removes, penalised with a growing L2 coefficient) beat sparse "
            "training with reg chosen by validation accuracy at the target on held-out ResNet-20, "
            "ResNet-56 and VGG-19 models (benchmarks/RESULTS.md, issue 20)", True,
        )  # fmt: skip
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
            "(benchmarks/RESULTS.md)", True,
        )  # fmt: skip
    norm = config.importance.normalizer
    how = (
        "the criterion (group-L2 with each normaliser, group-L2 per MAC, taylor, hessian) "
        "chosen by validation "
        "accuracy at the target" if norm == "auto" else f"group-L2 with the {norm!r} normaliser"
    )  # fmt: skip
    return MethodChoice(
        "group-l2", "auto",
        f"before_pruning has 0 epochs, so sparse training cannot act; {how}", True,
    )  # fmt: skip
