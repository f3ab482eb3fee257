"""Held-out records kept with an export, and the choice that reads them (issue 21)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from graph_encoding import encode
from metanet import MetaNetwork, export
from metanet.choice import NoMetanetworkError, choose_metanetwork
from metanet.export import read_document
from metanet.record import attach_record, extrapolate_runs, heldout_record, record_verdict
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
    # paired differences 0.03, 0.03, 0.04, -0.01: sample sd 0.0222, over sqrt(4)
    assert t2["gain_se"] == pytest.approx(0.0111, abs=1e-4)
    assert win["fam"]["targets"]["3.0"]["gain_se"] == pytest.approx(0.0)
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


def test_extrapolation_is_log_linear_in_runs() -> None:
    # +0.5 points per doubling from 0 at 16 runs: +2 points at 16 * 2**4 = 256 runs
    fit = extrapolate_runs([(16, 0.0), (32, 0.005), (64, 0.01)])
    assert fit["slope"] == pytest.approx(0.005) and fit["intercept"] == pytest.approx(-0.02)
    assert fit["runs_for_goal"] == pytest.approx(256) and fit["goal"] == 0.02
    half = extrapolate_runs([(24, 0.0), (96, 0.02)], goal=0.01)
    assert half["runs_for_goal"] == pytest.approx(48)
    # least squares over three noisy points: the middle one pulls neither end
    assert extrapolate_runs([(8, 0.0), (16, 0.01), (32, 0.0)])["slope"] == pytest.approx(0.0)
    assert extrapolate_runs([(24, 0.01), (96, 0.0)])["runs_for_goal"] is None  # falls
    assert extrapolate_runs([(24, 0.0), (96, 1e-12)])["runs_for_goal"] == math.inf
    with pytest.raises(ValueError, match="two different run counts"):
        extrapolate_runs([(24, 0.0), (24, 0.01)])
    with pytest.raises(ValueError, match="must be positive"):
        extrapolate_runs([(0, 0.0), (24, 0.01)])


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
