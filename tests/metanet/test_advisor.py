"""The metanetwork's say in the pipeline's method choice, by held-out record per family
(metanet/advisor.py, issue 21): a winner is offered, a loser never, and without a winner
``--metanet auto`` runs the strongest baseline."""

from __future__ import annotations

import importlib

import pytest
import torch

from graph_encoding import encode
from metanet import MetaNetwork, export
from metanet.advisor import advise, records, winners
from metanet.method import _metanetwork
from metanet.record import attach_record
from metanet.summary import training_summary
from metaprune.models import create_model
from metaprune.pruning import FinetuneBudget, PruneConfig
from metaprune.pruning.auto import baseline_method, resolve_method
from metaprune.pruning.methods import MethodContext

FAMILY = "cifar_resnet20"
ZERO = FinetuneBudget(epochs=0)


def _record(verdict: str, gain: float = 0.025, wins: int = 7) -> dict:
    targets = {t: {"models": 8, "metanet": 0.8 + gain, "baseline": 0.8, "gain": gain,
                   "wins": wins, "meets_rule": verdict == "wins"} for t in ("2.0", "3.0")}  # fmt: skip
    return {"baseline": "default", "targets": targets, "verdict": verdict}


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Only net-a and net-b are registered (the shipped ones are hidden); both trained, by
    their summaries, on ResNet-20s; no records yet."""
    monkeypatch.setattr(importlib.import_module("metanet.export"), "PRETRAINED_DIR", tmp_path / "none")
    reg = tmp_path / "reg"
    graph = encode(create_model(FAMILY, in_channels=1).eval(), torch.zeros(1, 1, 8, 8))
    torch.manual_seed(0)
    for name in ("net-a", "net-b"):
        export(MetaNetwork(1, 4, edge_encoding="canonical"), reg / name,
               summary=training_summary([graph], [FAMILY]))  # fmt: skip
    monkeypatch.setenv("METAPRUNE_METANET_PATH", str(reg))
    return reg


def test_without_a_winning_record_metanet_auto_runs_the_strongest_baseline(registry) -> None:
    for epochs, method in ((0, "group-l2"), (10, "growing-reg")):
        budget = FinetuneBudget(epochs=epochs)
        for metanet in (None, "auto"):
            config = PruneConfig(method="metanet", metanet=metanet, before_pruning=budget)
            choice = resolve_method(config, FAMILY)
            assert (choice.method, choice.requested, choice.data_aware) == (method, "metanet", True)
            assert choice.reason.startswith(f"no registered metanetwork has a winning held-out record on {FAMILY}")
            assert "(net-a: no record, net-b: no record): the strongest baseline instead" in choice.reason
            assert choice.reason.endswith(baseline_method(config).reason)
    attach_record(registry / "net-a", {FAMILY: _record("loses")})
    attach_record(registry / "net-b", {"cifar_vgg19_bn": _record("wins")})  # another family's
    choice = resolve_method(PruneConfig(method="metanet", before_pruning=ZERO), FAMILY)
    assert choice.method == "group-l2" and "net-a: 'loses', net-b: no record" in choice.reason
    unknown = resolve_method(PruneConfig(method="metanet", before_pruning=ZERO), None)
    assert unknown.method == "group-l2" and "its family is unknown" in unknown.reason
    # auto at 0 epochs: the rule, as without the advisor
    auto = PruneConfig(before_pruning=ZERO)
    assert resolve_method(auto, FAMILY) == baseline_method(auto)
    assert winners(FAMILY) == [] and winners("cifar_vgg19_bn") == ["net-b"]


def test_nothing_registered_is_no_evidence(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(importlib.import_module("metanet.export"), "PRETRAINED_DIR", tmp_path)
    monkeypatch.delenv("METAPRUNE_METANET_PATH", raising=False)
    assert records(FAMILY) == {}
    choice = resolve_method(PruneConfig(method="metanet", before_pruning=ZERO), FAMILY)
    assert choice.method == "group-l2" and "(none is registered)" in choice.reason


def test_a_winning_record_offers_the_metanetwork_on_its_family_only(registry) -> None:
    attach_record(registry / "net-b", {FAMILY: _record("wins"), "cifar_resnet56": _record("loses")})
    auto = PruneConfig(before_pruning=ZERO)
    choice = resolve_method(auto, FAMILY)
    assert (choice.method, choice.requested, choice.data_aware) == ("metanet", "auto", False)
    assert f"winning held-out record on {FAMILY} at 0 epochs" in choice.reason
    assert "net-b: 2x +2.5 points, 7/8 wins, 3x +2.5 points, 7/8 wins against 'default'" in choice.reason
    assert "net-a" not in choice.reason
    # epochs: the record says nothing there; other families: no evidence
    assert resolve_method(PruneConfig(), FAMILY).method == "growing-reg"
    assert resolve_method(auto, "cifar_resnet56") == baseline_method(auto)
    assert resolve_method(auto, None) == baseline_method(auto)
    # metanet auto with a winner: the method runs and chooses among the winners
    by_graph = resolve_method(PruneConfig(method="metanet", before_pruning=ZERO), FAMILY)
    assert (by_graph.method, by_graph.reason) == ("metanet", "requested explicitly")
    # a named metanetwork is run as asked, record or not; advise=False skips the evidence
    named = PruneConfig(method="metanet", metanet="net-a", before_pruning=ZERO)
    assert advise(named, FAMILY) is None and resolve_method(named, FAMILY).method == "metanet"
    assert resolve_method(auto, FAMILY, advise=False) == baseline_method(auto)


def test_the_method_chooses_among_winners_only(registry) -> None:
    model = create_model(FAMILY, in_channels=1, width=0.25).eval()
    ctx = MethodContext(PruneConfig(method="metanet", metanet="auto"), None, None,
                        torch.device("cpu"), torch.zeros(1, 1, 8, 8), family=FAMILY)  # fmt: skip
    _, details, _ = _metanetwork(model, ctx)
    assert details["name"] == "net-a" and details["record"] is None  # equal distance: the name
    attach_record(registry / "net-b", {FAMILY: _record("wins")})
    _, details, _ = _metanetwork(model, ctx)
    assert details["name"] == "net-b" and details["record"] == "wins"
    assert [c["name"] for c in details["candidates"]] == ["net-b"]  # net-a has no evidence
    attach_record(registry / "net-a", {FAMILY: _record("wins")})
    _, details, _ = _metanetwork(model, ctx)
    assert details["name"] == "net-a" and [c["record"] for c in details["candidates"]] == ["wins"] * 2


def test_the_shipped_networks_lose_on_their_family_and_are_never_offered(monkeypatch) -> None:
    """Both shipped networks carry a measured held-out record (benchmarks/RESULTS.md, issue 21
    third and fourth passes) that loses on ResNet-20s: ``auto`` offers neither there."""
    from metanet.choice import NoMetanetworkError, choose_metanetwork
    from metanet.export import read_document

    monkeypatch.delenv("METAPRUNE_METANET_PATH", raising=False)
    found = records(FAMILY)
    assert {"resnet20-digits", "general-digits"} <= set(found)
    for name in ("resnet20-digits", "general-digits"):
        record = found[name]
        assert record is not None and record["verdict"] == "loses", name
        assert set(record["targets"]) == {"2.0", "3.0"}
        assert all(s["models"] == 8 and not s["meets_rule"] for s in record["targets"].values())
        assert read_document(name)["config"]  # the record did not replace the export's config
    assert winners(FAMILY) == []
    graph = encode(create_model(FAMILY, in_channels=1).eval(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(NoMetanetworkError, match="does not lose to the baseline"):
        choose_metanetwork(graph, ["resnet20-digits", "general-digits"], family=FAMILY)
    config = PruneConfig(method="metanet", before_pruning=ZERO, after_pruning=ZERO)
    choice = advise(config, FAMILY)
    assert choice is not None and choice.method != "metanet"
    assert "resnet20-digits: 'loses'" in choice.reason and "general-digits: 'loses'" in choice.reason
