"""Automatic metanetwork choice (metanet/choice.py) and training summaries
(metanet/summary.py): deterministic, family-specific when in range, general otherwise,
warning when far, a clear NotFoundError when nothing can run."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from graph_encoding import encode
from metanet import MetaNetwork, export
from metanet.choice import NoMetanetworkError, choose_metanetwork
from metanet.export import read_document
from metanet.summary import derived_summary, graph_stats, training_summary
from metaprune.errors import NotFoundError
from metaprune.models import create_model
from metaprune.testing import MixedKernels


@pytest.fixture(scope="module")
def graphs() -> dict[str, object]:
    torch.manual_seed(0)
    return {
        "resnet20": encode(
            create_model("cifar_resnet20", in_channels=1).eval(), torch.randn(1, 1, 8, 8)
        ),  # fmt: skip
        "resnet56": encode(
            create_model("cifar_resnet56", in_channels=1).eval(), torch.randn(1, 1, 8, 8)
        ),  # fmt: skip
        "mixed": encode(MixedKernels().eval(), torch.randn(1, 3, 12, 12)),
        "resnet18": encode(
            create_model("torchvision/resnet18", num_classes=10).eval(), torch.randn(1, 3, 32, 32)
        ),  # fmt: skip
    }


@pytest.fixture
def registry(tmp_path, monkeypatch, graphs):
    """A registry dir with a tiny general net trained (by its summary) on ResNet-20s and
    mixed-kernel nets, and a per-type net for MixedKernels-only edge types."""
    torch.manual_seed(0)
    general = MetaNetwork(1, 4, edge_encoding="canonical")
    summary = training_summary([graphs["resnet20"], graphs["mixed"]], ["cifar_resnet20", "mixed"])
    export(general, tmp_path / "general-tiny", summary=summary)
    monkeypatch.setenv("METAPRUNE_METANET_PATH", str(tmp_path))
    return tmp_path


def test_summary_of_graphs_and_its_export_round_trip(registry, graphs) -> None:
    stats = graph_stats(graphs["resnet20"])
    assert stats["layers"] == 22 and stats["width"] == 64  # 19 convs, 2 projections, fc
    assert stats["edge_signatures"] == ["CONV:3x3", "IDENTITY:1x1", "LINEAR:1x1", "PROJECTION:1x1"]
    document = read_document("general-tiny")
    summary = document["summary"]
    assert json.loads(json.dumps(summary)) == summary
    assert summary["graphs"] == 2 and summary["architectures"] == ["cifar_resnet20", "mixed"]
    assert "CONV:11x11" in summary["edge_signatures"] and "CONV:7x7" in summary["edge_signatures"]
    mixed = graph_stats(graphs["mixed"])
    for stat in ("nodes", "layers", "width"):
        assert summary[stat] == sorted([stats[stat], mixed[stat]])
    assert document["config"]["edge_encoding"] == "canonical"
    with pytest.raises(ValueError, match="at least one graph"):
        training_summary([])


def test_the_shipped_export_gets_a_derived_summary(graphs) -> None:
    document = read_document("resnet20-digits")
    assert "summary" not in document  # its JSON is as shipped
    summary = derived_summary(document["config"], None)
    assert summary["nodes"] is None and summary["edge_types"][0] == "CONV:9"
    choice = choose_metanetwork(graphs["resnet20"], ["resnet20-digits"])
    (only,) = choice.candidates
    assert "from resnet20-digits.zoo.yaml" in only.summary_derived
    assert only.distance == 0 and only.outside == {} and choice.warning is None


def test_choice_is_deterministic_and_prefers_the_family_specific_net(registry, graphs) -> None:
    first = choose_metanetwork(graphs["resnet20"])
    names = [c.name for c in first.candidates]  # every registered one, shipped ones included
    again = choose_metanetwork(graphs["resnet20"], list(reversed(names)))
    assert first == again  # same candidates in another order: the same answer
    assert first.name == "resnet20-digits" and not first.chosen.general
    assert names[:2] == ["resnet20-digits", "general-tiny"] and "general-digits" in names
    assert first.candidates[1].distance == 0  # a tie at distance 0 ...
    assert "family-specific metanetwork, distance 0.00" in first.reason  # ... broken by kind
    assert "others: general-tiny general 0.00" in first.reason
    assert first.warning is None
    report = first.to_dict()
    assert json.loads(json.dumps(report)) == report and report["auto"] is True


def test_falls_back_to_the_general_net_for_7x7_and_1x1_kernels(registry, graphs) -> None:
    choice = choose_metanetwork(graphs["mixed"])
    assert choice.name == "general-tiny" and choice.chosen.general
    lacking = choice.candidates[-1]
    assert lacking.name == "resnet20-digits" and not lacking.runs
    assert {"CONV:49", "CONV:121", "DEPTHWISE_CONV:9"} <= set(lacking.missing)
    assert math.isinf(lacking.distance) and lacking.to_dict()["distance"] is None
    assert "cannot run: resnet20-digits (lacks CONV:1" in choice.reason
    assert choice.warning is None  # it saw this very graph


def test_warns_when_the_model_is_far_from_anything_seen(registry, graphs) -> None:
    far = choose_metanetwork(graphs["resnet18"])
    assert far.name == "general-tiny"
    assert far.warning.startswith("the model is far from what general-tiny saw")
    assert "width 512 outside the seen range [8, 64]" in far.warning
    assert far.chosen.unseen == ()  # 7x7, 3x3, 1x1 and linear were all seen
    # deeper than anything resnet20-digits saw (55+ layers vs 22): still runs, with a warning
    deep = choose_metanetwork(graphs["resnet56"], ["resnet20-digits"])
    assert deep.name == "resnet20-digits" and deep.chosen.outside["layers"][1:] == [22, 22]
    assert "layers 58 outside the seen range [22, 22]" in deep.warning
    # the general net saw no deeper model either, but a wider range: it is closer
    assert choose_metanetwork(graphs["resnet56"]).candidates[0].distance <= deep.chosen.distance


def test_unseen_edge_types_are_far_even_when_the_net_can_run(registry, graphs, tmp_path) -> None:
    torch.manual_seed(0)
    narrow = training_summary([graphs["resnet20"]])
    export(
        MetaNetwork(1, 4, edge_encoding="canonical"), registry / "general-narrow", summary=narrow
    )
    choice = choose_metanetwork(graphs["mixed"], ["general-narrow", "resnet20-digits"])
    assert choice.name == "general-narrow" and "CONV:7x7" in choice.chosen.unseen
    assert "edge types never seen in training: " in choice.warning


def test_no_candidate_can_run_is_a_not_found_error_naming_what_is_missing(graphs) -> None:
    with pytest.raises(
        NoMetanetworkError, match=r"resnet20-digits has no encoder for CONV:1,.*CONV:49"
    ) as err:
        choose_metanetwork(graphs["mixed"], ["resnet20-digits"])
    assert isinstance(err.value, NotFoundError)
    with pytest.raises(NoMetanetworkError, match="no encoder for .*a readable export"):
        choose_metanetwork(graphs["mixed"], ["no-such-net"])
    with pytest.raises(NoMetanetworkError, match="no metanetwork is registered"):
        choose_metanetwork(graphs["mixed"], [])


def test_prepare_logs_the_warning_and_records_the_choice(registry, graphs, caplog) -> None:
    from metanet.method import _metanetwork
    from metaprune.pruning import PruneConfig
    from metaprune.pruning.methods import MethodContext

    model = create_model("torchvision/resnet18", num_classes=10).eval()
    ctx = MethodContext(PruneConfig(method="metanet", metanet="auto"), None, None,
                        torch.device("cpu"), torch.randn(1, 3, 32, 32))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="metanet.method"):
        net, details, graph = _metanetwork(model, ctx)
    assert isinstance(net, MetaNetwork) and net.edge_encoding == "canonical"
    assert graph.num_nodes == graphs["resnet18"].num_nodes  # encoded once, reused by the rewrite
    assert details["name"] == "general-tiny" and "width 512" in details["warning"]
    assert any("far from what general-tiny saw" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(300)
def test_cli_export_records_the_summary_of_its_zoos(tmp_path, monkeypatch) -> None:
    from metanet.cli import main
    from metanet.training.data import ZooDataModule
    from metanet.zoo import build_zoo
    from metanet.zoo.tiny import tiny_zoo_config

    zoo = tmp_path / "zoo"
    build_zoo(tiny_zoo_config(size=2), zoo, progress=False)
    torch.manual_seed(0)
    net = MetaNetwork(1, 4, edge_encoding="canonical")
    ckpt = tmp_path / "best.ckpt"  # what `metanet fit` writes, reduced to what export reads
    torch.save({"metanet_config": net.config, "epoch": 3, "global_step": 12,
                "state_dict": {f"metanet.{k}": v for k, v in net.state_dict().items()}}, ckpt)  # fmt: skip
    out = tmp_path / "registry" / "general-zoo"
    assert (
        main(["metanet", "export", "--ckpt", str(ckpt), "--out", str(out), "--zoo", str(zoo)]) == 0
    )
    data = ZooDataModule(str(zoo))
    data.setup("fit")
    train_graphs = [m.graph for m in data.train_members]
    summary = read_document(out.with_suffix(".json"))["summary"]
    assert summary == training_summary(train_graphs, ["cifar_resnet20"])
    assert (
        summary["graphs"] == len(train_graphs) == 1 and summary["edge_signatures"][0] == "CONV:3x3"
    )
    monkeypatch.setenv("METAPRUNE_METANET_PATH", str(out.parent))
    choice = choose_metanetwork(data.val_members[0].graph, ["general-zoo"])
    assert choice.name == "general-zoo" and choice.warning is None
