"""The metanetwork's say in the pipeline's method choice: by evidence, per family (issue 21).

The pipeline never imports this package; importing ``metanet`` registers :func:`advise`
with :func:`metaprune.pruning.auto.register_advisor`, which the pipeline consults with the
model's family (its architecture name) before its own rule. The evidence is the held-out
record kept with each registered export (:mod:`metanet.record`, written by
``benchmarks/metanet_curve.py heldout``): the guarded ``metanet`` path against the
strongest 0-epoch baseline on held-out models of a family, with a verdict by the issue's
decision rule. So:

* ``method="auto"`` at 0 epochs runs ``metanet`` when some registered network's record
  on the family *wins* (the reason quotes it); the record says nothing about budgets
  with epochs, so there the rule's sparse training stays.
* ``method="metanet"`` with ``metanet`` ``None`` / ``"auto"`` runs the strongest
  baseline for the budget (the rule of :func:`~metaprune.pruning.auto.baseline_method`,
  with the data-aware criteria) when no registered network wins on the family; when one
  does, the metanet method chooses among the winners only, by the graph
  (:func:`winners`). A network whose record *loses* on the family is never offered.

A named metanetwork (``metanet="general-digits"``) is the caller's decision and is run
as asked.
"""

from __future__ import annotations

from typing import Any

from metaprune.errors import InvalidInputError, quote
from metaprune.pruning.auto import MethodChoice, baseline_method, register_advisor
from metaprune.pruning.config import PruneConfig

from .export import list_pretrained, read_document

__all__ = ["AUTO", "advise", "records", "winners"]

AUTO = "auto"


def records(family: str | None) -> dict[str, dict[str, Any] | None]:
    """Each registered metanetwork's held-out record on ``family`` (``None``: none kept,
    or the export is unreadable, which counts as no evidence)."""
    out: dict[str, dict[str, Any] | None] = {}
    for name in list_pretrained():
        try:
            entry = (read_document(name, allow_paths=False).get("heldout") or {}).get(family)
        except (InvalidInputError, OSError, ValueError):
            entry = None
        out[name] = entry if isinstance(entry, dict) and family is not None else None
    return out


def winners(family: str | None) -> list[str]:
    """Registered metanetworks whose held-out record on ``family`` wins, by name."""
    return [n for n, r in records(family).items() if r is not None and r.get("verdict") == "wins"]


def advise(config: PruneConfig, family: str | None) -> MethodChoice | None:
    """The pipeline's advisor (module doc); ``None`` leaves the choice to its rule."""
    by_graph = config.method == "metanet" and config.metanet in (None, AUTO)
    zero_auto = config.method == AUTO and config.before_pruning.epochs == 0
    if not (by_graph or zero_auto):
        return None
    found = records(family)
    wins = sorted(n for n, r in found.items() if r is not None and r.get("verdict") == "wins")
    if wins and by_graph:
        return None  # the method chooses among the winners at run time (metanet.method)
    if wins:
        return MethodChoice("metanet", AUTO, (
            f"a registered metanetwork has a winning held-out record on {family} at 0 epochs "
            f"({'; '.join(_quote_record(n, found[n]) for n in wins)}); the guarded metanet "
            "path, the network chosen among these by the model's graph"
        ))  # fmt: skip
    if not by_graph:
        return None
    base = baseline_method(config)
    return MethodChoice(base.method, "metanet", (
        f"no registered metanetwork has a winning held-out record on "
        f"{family if family is not None else 'this model (its family is unknown: no architecture spec)'}"
        f" ({_evidence(found)}): the strongest baseline instead; {base.reason}"
    ), data_aware=True)  # fmt: skip


def _quote_record(name: str, record: dict[str, Any]) -> str:
    targets = record.get("targets") or {}
    parts = []
    for target, s in sorted(targets.items()):
        try:
            parts.append(f"{float(target):g}x {100 * float(s['gain']):+.1f} points, "
                         f"{int(s['wins'])}/{int(s['models'])} wins")  # fmt: skip
        except (KeyError, TypeError, ValueError):
            parts.append(f"{quote(target)}: unreadable")
    baseline = quote(record.get("baseline", "default"))
    return f"{name}: " + ", ".join(parts) + f" against {baseline}"


def _evidence(found: dict[str, dict[str, Any] | None]) -> str:
    if not found:
        return "none is registered"
    return ", ".join(
        f"{n}: {'no record' if r is None else quote(r.get('verdict'))}" for n, r in found.items()
    )


register_advisor(advise)
