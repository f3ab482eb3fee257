"""Held-out records kept with an export, and the choice that reads them (issue 21)."""

from __future__ import annotations

import json

import pytest
import torch

from graph_encoding import encode
from metanet import MetaNetwork, export
from metanet.choice import NoMetanetworkError, choose_metanetwork
from metanet.export import read_document
from metanet.record import attach_record, heldout_record, record_verdict
from metaprune.models import create_model

NETS = ["net-a", "net-b"]


def _rows(gains: dict[str, list[float]], base: float = 0.8) -> dict[str, dict]:
    rows = {}
    for target, per_model in gains.items():
        for i, g in enumerate(per_model):
            rows[f"default/fam/s{100 + i}/{target}"] = {"test": base}
            rows[f"net/fam/s{100 + i}/{target}"] = {"test": base + g}
    return rows


def test_record_applies_the_decision_rule() -> None:
    win = heldout_record(_rows({"2.0": [0.03, 0.03, 0.04, -0.01], "3.0": [0.05] * 4}), "net")
    t2 = win["fam"]["targets"]["2.0"]
    assert t2["models"] == 4 and t2["wins"] == 3 and t2["gain"] == pytest.approx(0.0225)
    assert t2["baseline"] == pytest.approx(0.8) and t2["meets_rule"]
    assert win["fam"]["verdict"] == "wins" and win["fam"]["baseline"] == "default"
    # 2 of 4 wins, or a mean gain under 2 points at one target: loses
    for gains in ({"2.0": [0.1, 0.1, -0.01, -0.01]}, {"2.0": [0.05] * 4, "3.0": [0.015] * 4}):
        assert heldout_record(_rows(gains), "net")["fam"]["verdict"] == "loses"
    # models without a baseline row do not count; other tags are ignored
    rows = _rows({"2.0": [0.05] * 4})
    rows["net/fam/s999/2.0"] = {"test": 1.0}
    rows["other/fam/s100/2.0"] = {"test": 0.0}
    assert heldout_record(rows, "net")["fam"]["targets"]["2.0"]["models"] == 4
    assert heldout_record(rows, "missing") == {}


@pytest.fixture
def registry(tmp_path, monkeypatch):
    torch.manual_seed(0)
    for name in ("net-a", "net-b"):
        export(MetaNetwork(1, 4, edge_encoding="canonical"), tmp_path / name)
    monkeypatch.setenv("METAPRUNE_METANET_PATH", str(tmp_path))
    return tmp_path


def test_choice_excludes_losers_and_prefers_winners(registry) -> None:
    graph = encode(create_model("cifar_resnet20", in_channels=1).eval(), torch.zeros(1, 1, 8, 8))
    lose = {"cifar_resnet20": {"verdict": "loses", "targets": {}, "baseline": "default"}}
    win = {"cifar_resnet20": {"verdict": "wins", "targets": {}, "baseline": "default"}}
    assert choose_metanetwork(graph, NETS).name == "net-a"  # no evidence asked: as before
    no_family = choose_metanetwork(graph, NETS, family="cifar_resnet20")
    assert no_family.name == "net-a" and not no_family.evidence
    attach_record(registry / "net-a", lose)
    assert record_verdict(read_document("net-a"), "cifar_resnet20") == "loses"
    assert record_verdict(read_document("net-a"), "cifar_vgg19_bn") is None
    assert choose_metanetwork(graph, NETS).name == "net-a"  # the record binds only its family
    choice = choose_metanetwork(graph, NETS, family="cifar_resnet20")
    assert choice.name == "net-b" and not choice.evidence
    assert "does not lose" in " ".join(choice.candidates[-1].missing)
    attach_record(registry / "net-b", win)
    choice = choose_metanetwork(graph, NETS, family="cifar_resnet20")
    assert choice.name == "net-b" and choice.evidence and choice.to_dict()["record"] == "wins"
    attach_record(registry / "net-b.json", lose)
    with pytest.raises(NoMetanetworkError, match="does not lose to the baseline"):
        choose_metanetwork(graph, NETS, family="cifar_resnet20")
    document = json.loads((registry / "net-b.json").read_text())
    assert set(document["heldout"]) == {"cifar_resnet20"} and document["config"]
