"""Exported metanetworks: safetensors + JSON round trip, name resolution, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from graph_encoding import encode
from metanet import MetaNetwork, edge_types_of
from metanet.export import PRETRAINED_DIR, ExportError, export, list_pretrained, load
from metaprune.testing import TinyConvNet, randomize_norms


def _graph():
    model = randomize_norms(TinyConvNet(in_channels=1), seed=0).eval()
    return encode(model, torch.randn(1, 1, 6, 6))


def test_round_trip_gives_equal_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    graph = _graph()
    metanet = MetaNetwork(2, 8, edge_types=edge_types_of([graph]), node_ratio=0.05, edge_ratio=0.02)
    weights, config = export(metanet, tmp_path / "m", info={"note": "test"})
    assert weights.name == "m.safetensors" and config.name == "m.json"
    document = json.loads(config.read_text())
    assert document["format_version"] == 1 and document["config"] == metanet.config
    assert document["info"] == {"note": "test"}
    for source in (tmp_path / "m", weights, config):
        restored = load(source)
        assert restored.config == metanet.config and not restored.training
        x, e = metanet(graph)
        x2, e2 = restored(graph)
        assert torch.equal(x, x2) and torch.equal(e, e2)
    # the safetensors file alone is enough (the config is in its metadata)
    config.unlink()
    assert load(weights).config == metanet.config


def test_shipped_names_resolve_against_the_pretrained_directory() -> None:
    names = list_pretrained()
    assert all((PRETRAINED_DIR / f"{n}.json").exists() for n in names)
    for name in names:
        metanet = load(name)
        assert (
            isinstance(metanet, MetaNetwork)
            and metanet.config
            == json.loads((PRETRAINED_DIR / f"{name}.json").read_text())["config"]
        )


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="'no-such-metanet' is not registered"):
        load("no-such-metanet")
    graph = _graph()
    metanet = MetaNetwork(1, 8, edge_types=edge_types_of([graph]))
    export(metanet, tmp_path / "m")
    document = json.loads((tmp_path / "m.json").read_text())
    document["config"]["hidden"] = 16
    (tmp_path / "m.json").write_text(json.dumps(document))
    with pytest.raises(ExportError, match="does not match its config"):
        load(tmp_path / "m")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ExportError, match="expected format_version 1"):
        load(tmp_path / "bare.safetensors")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="is a Lightning checkpoint; jobs read only exported"):
        load(tmp_path / "junk.ckpt")
