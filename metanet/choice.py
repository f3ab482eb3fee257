"""Automatic choice among shipped metanetworks by the model's graph.

:func:`choose_metanetwork` reads each candidate's JSON (never its weights), keeps those
that can run on the graph (a per-type network needs an encoder for every edge type, a
canonical one a flag for every kind), and ranks them by how far the graph is from what
each was trained on (its :mod:`~metanet.summary`):

    distance = (edge types the graph has and training never saw)
             + sum over nodes / layers / width of max(0, ln(lo / v), ln(v / hi))

With ``family`` given (issue 21), the measured held-out record kept with each export
(:mod:`metanet.record`) comes first: a candidate whose record on that family *loses* to the
strongest baseline cannot be chosen, and one whose record *wins* ranks above any without
evidence; :meth:`MetanetChoice.evidence` says whether the chosen one has a winning record
(a caller that requires evidence falls back to the baseline otherwise).

Ties (and equal distances, e.g. both 0) prefer a family-specific (per-type) network over
a general (canonical) one, then the smaller name, so the choice is deterministic. The
choice is *far* (``warning`` set) when the graph has an edge type the chosen network never
saw or a statistic outside its seen range by more than ``margin`` (2x by default).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graph_encoding import ModelGraph
from metaprune.errors import InvalidInputError, NotFoundError, quote
from metaprune.limits import DEFAULT_LIMITS, Limits

from .export import _base, _build, list_pretrained, read_document
from .record import record_verdict
from .summary import STATS, derived_summary, graph_stats

__all__ = ["Candidate", "MetanetChoice", "NoMetanetworkError", "choose_metanetwork"]

DEFAULT_MARGIN = 2.0


class NoMetanetworkError(NotFoundError):
    """No candidate metanetwork can run on the model's graph (or none is registered)."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One candidate as :func:`choose_metanetwork` saw it.

    Attributes:
        name: as given.
        general: a canonical (kernel-size-agnostic) network.
        missing: what in the graph it has no encoder for (empty: it can run).
        unseen: edge types of the graph its training never saw.
        outside: ``{stat: [value, lo, hi]}`` of statistics outside its seen range.
        distance: see the module doc (``inf`` if it cannot run).
        summary_derived: how its summary was derived, if it recorded none.
    """

    name: str
    general: bool
    missing: tuple[str, ...]
    unseen: tuple[str, ...]
    outside: dict[str, list[int]]
    distance: float
    summary_derived: str | None = None
    record: str | None = None  # held-out verdict on the asked family: "wins", "loses", None

    @property
    def runs(self) -> bool:
        return not self.missing

    def key(self) -> tuple[bool, float, bool, str]:
        return (self.record != "wins", self.distance, self.general, self.name)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(missing=list(self.missing), unseen=list(self.unseen))
        data["distance"] = self.distance if math.isfinite(self.distance) else None
        return data


@dataclasses.dataclass(frozen=True)
class MetanetChoice:
    """The chosen metanetwork, why, and whether the model is far from its training.

    Attributes:
        name: the chosen candidate.
        reason: one line: what it is, its distance, the runners-up.
        warning: ``None``, or why the model is far from anything it saw.
        candidates: every candidate, best first (those that cannot run last).
    """

    name: str
    reason: str
    warning: str | None
    candidates: tuple[Candidate, ...]

    @property
    def chosen(self) -> Candidate:
        return self.candidates[0]

    @property
    def evidence(self) -> bool:
        """Whether the chosen network has a winning held-out record on the asked family."""
        return self.chosen.record == "wins"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the prune report."""
        return {
            "name": self.name,
            "auto": True,
            "general": self.chosen.general,
            "distance": self.chosen.distance,
            "record": self.chosen.record,
            "reason": self.reason,
            "warning": self.warning,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def choose_metanetwork(
    graph: ModelGraph,
    candidates: Sequence[str | os.PathLike[str]] | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    allow_paths: bool = True,
    margin: float = DEFAULT_MARGIN,
    family: str | None = None,
) -> MetanetChoice:
    """The candidate metanetwork to use on ``graph`` (module doc).

    Args:
        graph: the model's graph (:func:`graph_encoding.encode`; one model, not a Batch).
        candidates: registered names (or, with ``allow_paths``, export paths); default
            every registered metanetwork (:func:`metanet.export.list_pretrained`).
        limits: bounds for reading each candidate's files.
        margin: a statistic outside the seen range by more than this factor is "far".
        family: the model's family (architecture name): candidates whose held-out record
            loses on it are excluded, winning ones rank first (module doc).

    Raises:
        NoMetanetworkError: no candidate, or none can run on ``graph`` (the message names
            what each one lacks).
        InvalidInputError: ``margin`` < 1.
    """
    if not margin >= 1.0:
        raise InvalidInputError(f"margin must be >= 1 (found {quote(margin)})")
    names = sorted(list_pretrained() if candidates is None else {os.fspath(c) for c in candidates})
    if not names:
        raise NoMetanetworkError(
            "no metanetwork is registered to choose from (metanet/pretrained/ and "
            "$METAPRUNE_METANET_PATH hold none)"
        )
    stats = graph_stats(graph)
    seen = [_candidate(name, graph, stats, limits, allow_paths, family) for name in names]
    ranked = sorted((c for c in seen if c.runs), key=Candidate.key)
    if not ranked:
        lacks = "; ".join(f"{c.name} has no encoder for {', '.join(c.missing)}" for c in seen)
        raise NoMetanetworkError(f"no metanetwork can run on this model's graph: {lacks}")
    best = ranked[0]
    others = ", ".join(f"{c.name} {_kind(c)} {c.distance:.2f}" for c in ranked[1:])
    cannot = ", ".join(f"{c.name} (lacks {', '.join(c.missing)})" for c in seen if not c.runs)
    reason = (
        f"{best.name}: {_kind(best)} metanetwork, distance {best.distance:.2f} from what it "
        f"was trained on (the closest of {len(ranked)} that can run"
        + (f"; others: {others}" if others else "")
        + (f"; cannot run: {cannot}" if cannot else "")
        + ")"
    )
    far = []
    if best.unseen:
        far.append(f"edge types never seen in training: {', '.join(best.unseen)}")
    for stat, (value, lo, hi) in best.outside.items():
        if max(lo / max(value, 1), value / max(hi, 1)) > margin:
            far.append(
                f"{stat} {value} outside the seen range [{lo}, {hi}] by more than {margin:g}x"
            )
    warning = f"the model is far from what {best.name} saw: {'; '.join(far)}" if far else None
    order = tuple(ranked) + tuple(c for c in seen if not c.runs)
    return MetanetChoice(best.name, reason, warning, order)


def _kind(candidate: Candidate) -> str:
    return "general" if candidate.general else "family-specific"


def _candidate(
    name: str, graph: ModelGraph, stats: dict[str, Any], limits: Limits, allow_paths: bool,
    family: str | None = None,
) -> Candidate:  # fmt: skip
    try:
        document = read_document(name, limits=limits, allow_paths=allow_paths)
        config = document["config"]
        net = _build(config, "meta", limits, f"metanetwork {quote(name)}")
    except InvalidInputError as err:  # unreadable: it cannot run, and the error says why
        return Candidate(name, False, (f"a readable export ({err})",), (), {}, math.inf)
    general = config.get("edge_encoding") == "canonical"
    missing = tuple(net.unsupported(graph))
    summary = document.get("summary")
    derived = None
    if not isinstance(summary, dict):
        summary = derived_summary(config, _base(Path(document["path"])))
        derived = summary["derived"]
    if summary.get("edge_signatures") is not None:
        unseen = sorted(set(stats["edge_signatures"]) - set(summary["edge_signatures"]))
    else:
        unseen = sorted(set(stats["edge_types"]) - set(summary.get("edge_types") or ()))
    outside: dict[str, list[int]] = {}
    distance = float(len(unseen))
    for stat in STATS:
        seen_range = summary.get(stat)
        if not seen_range:
            continue  # unknown: no evidence either way
        value, (lo, hi) = stats[stat], seen_range
        gap = max(0.0, math.log(max(lo, 1) / max(value, 1)), math.log(max(value, 1) / max(hi, 1)))
        if gap > 0:
            outside[stat] = [value, lo, hi]
            distance += gap
    record = record_verdict(document, family) if family is not None else None
    if record == "loses":
        missing += (f"a held-out record on {family} that does not lose to the baseline",)
    if missing:
        distance = math.inf
    return Candidate(name, general, missing, tuple(unseen), outside, distance, derived, record)
