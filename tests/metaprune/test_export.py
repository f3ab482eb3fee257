"""``metaprune export`` (metaprune/export.py): ONNX and torch.export files that reproduce the
model, checked here again independently of the exporter's own check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from metaprune import checkpoint
from metaprune.cli import main
from metaprune.errors import LimitExceededError
from metaprune.export import TOLERANCE, ExportError, export_checkpoint, export_model
from metaprune.limits import Limits
from metaprune.models import ArchSpec

SPEC = ArchSpec("cifar_resnet20", {"width": 0.25, "num_classes": 4})


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pruned cifar_resnet20 checkpoint (8x8 inputs), saved with its channel plan."""
    torch.manual_seed(0)
    model = SPEC.build().eval()
    tp.pruner.BasePruner(
        model, torch.randn(1, 3, 8, 8), importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5, ignored_layers=[model.fc],
    ).step()  # fmt: skip
    assert model.layer1[0].conv1.out_channels == 2
    path = tmp_path_factory.mktemp("pruned") / "pruned.safetensors"
    return checkpoint.save(model, SPEC.with_plan_of(model), path)


def _inputs(shape: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)  # other inputs than the exporter's check
    return [torch.randn(n, *shape, generator=g) for n in (1, 5)]


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= TOLERANCE * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("which", ["unpruned", "pruned"])
def test_pt2_round_trip(pruned: Path, tmp_path: Path, which: str) -> None:
    if which == "unpruned":
        torch.manual_seed(1)
        pruned = checkpoint.save(SPEC.build(), SPEC, tmp_path / "unpruned.safetensors")
    model = checkpoint.load(pruned)[0].eval()
    result = export_checkpoint(pruned, tmp_path / "m.pt2", "pt2", input_shape=(3, 8, 8))
    assert result.dynamic_batch and result.fixed_batch is None and result.input_shape == (3, 8, 8)
    assert result.max_abs_diff <= result.tolerance
    loaded = torch.export.load(str(result.path)).module()
    with torch.no_grad():
        for x in _inputs((3, 8, 8)):  # batch 1 and 5: the batch is dynamic
            assert torch.equal(loaded(x), model(x))  # the same kernels: bit for bit
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary


@pytest.mark.slow  # the dynamo ONNX exporter takes ~10-20 s on 2 shared cores
def test_onnx_round_trip_of_a_pruned_model(pruned: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    model = checkpoint.load(pruned)[0].eval()
    result = export_checkpoint(pruned, tmp_path / "m.onnx", "onnx", input_shape=(3, 8, 8))
    assert result.dynamic_batch and result.max_abs_diff <= result.tolerance
    graph = onnx.load(str(result.path)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == [
        "logits"
    ]
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for x in _inputs((3, 8, 8)):
            _close(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), model(x))


class _Broken(nn.Module):
    """Traces fine, but its output depends on a Python-side counter torch.export freezes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1)) * self.calls


def test_an_export_that_does_not_reproduce_the_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="differs from the model by up to"):
        export_model(_Broken(), tmp_path / "b.pt2", "pt2", (1, 2, 2))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="format must be one of onnx, pt2"):
        export_model(_Broken(), tmp_path / "b.x", "tflite", (1, 2, 2))


def test_input_shape_defaults_and_bounds(pruned: Path, tmp_path: Path, capsys) -> None:
    # the shape prune recorded in the checkpoint wins over the spec's default (32 px)
    model, spec = checkpoint.load(pruned)
    tagged = checkpoint.save(
        model, spec, tmp_path / "tagged.safetensors", metadata={"input_shape": "[3, 8, 8]"}
    )
    assert (
        main(["export", str(tagged), "--format", "pt2", "-o", str(tmp_path / "t.pt2"), "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["input_shape"] == [3, 8, 8]
    argv = ["export", str(pruned), "--format", "pt2", "-o", str(tmp_path / "d.pt2"), "--json"]
    assert main([*argv, "--dataset", "synthetic", "--dataset-kwargs", '{"image_size": 12}']) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [3, 12, 12]
    assert main([*argv, "--input-size", "4000"]) == 2
    assert "max_image_size" in capsys.readouterr().err
    with pytest.raises(LimitExceededError, match="max_macs"):
        export_checkpoint(pruned, tmp_path / "x.pt2", "pt2", limits=Limits(max_macs=1000))
    assert main(["export", str(pruned), "--format", "zip", "-o", str(tmp_path / "z")]) == 2
    assert "invalid choice: 'zip'" in capsys.readouterr().err


def test_the_cli_offers_exactly_the_export_formats() -> None:
    from metaprune import cli
    from metaprune.export import FORMATS

    assert cli._EXPORT_FORMATS == FORMATS  # the CLI keeps its own copy to stay torch-free
