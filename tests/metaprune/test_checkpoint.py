"""Tests for metaprune.checkpoint: safe round trips and one clear error per failure mode."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from metaprune import checkpoint
from metaprune.checkpoint import (
    SPEC_KEY,
    VERSION_KEY,
    CheckpointError,
    load,
    load_state,
    read_spec,
    save,
)
from metaprune.models import ArchSpec

SPEC = ArchSpec("cifar_resnet20", {"num_classes": 4, "in_channels": 1, "width": 0.25})


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    net = SPEC.build()
    net(torch.randn(4, 1, 8, 8))  # non-trivial BN running stats
    return net.eval()


def _assert_same_state(a: nn.Module | dict, b: nn.Module | dict) -> None:
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def _raw_save(path: Path, state: dict, spec_json: object = None, version: str | None = "1") -> Path:
    """Write a safetensors file bypassing save()'s validation (to test load's)."""
    metadata = {}
    if spec_json is not None:
        metadata[SPEC_KEY] = spec_json if isinstance(spec_json, str) else json.dumps(spec_json)
    if version is not None:
        metadata[VERSION_KEY] = version
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def test_round_trip_unpruned(model: nn.Module, tmp_path: Path) -> None:
    path = save(model, SPEC, tmp_path / "sub" / "model.safetensors")
    assert path == tmp_path / "sub" / "model.safetensors" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "model.safetensors"
    ]  # no temp files left
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(model.state_dict())
    assert meta[VERSION_KEY] == "1"
    assert json.loads(meta[SPEC_KEY]) == SPEC.to_json()

    loaded, spec = load(path)
    assert spec == SPEC and read_spec(path) == SPEC
    _assert_same_state(loaded, model)
    assert all(not t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))
    assert loaded.training and all(p.requires_grad for p in loaded.parameters())
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(loaded.eval()(x), model(x))

    state, spec2 = load_state(path)
    assert spec2 == SPEC
    _assert_same_state(state, model)
    from_state, _ = load_state(save(model.state_dict(), SPEC, tmp_path / "state.safetensors"))
    _assert_same_state(from_state, state)


def test_round_trip_pruned_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ArchSpec("cifar_resnet20", {"num_classes": 10})
    model = spec.build().eval()
    pruner = tp.pruner.BasePruner(
        model,
        torch.randn(1, 3, 32, 32),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model.fc],
    )
    pruner.step()
    assert model.layer1[0].conv1.out_channels == 8
    pruned_spec = spec.with_plan_of(model)
    with pytest.raises(CheckpointError, match="expected shape"):
        save(model, spec, tmp_path / "wrong.safetensors")  # the plan is required
    assert not (tmp_path / "wrong.safetensors").exists()
    path = save(model, pruned_spec, tmp_path / "pruned.safetensors")
    loaded, spec2 = load(path)
    assert spec2 == pruned_spec and spec2.channel_plan == pruned_spec.channel_plan
    assert (
        loaded.layer1[0].conv1.out_channels == 8 and loaded.fc.in_features == model.fc.in_features
    )
    _assert_same_state(loaded, model)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), model(x))
    # a model built from the pruned spec saves too
    rebuilt = pruned_spec.build()
    rebuilt.load_state_dict(model.state_dict())
    save(rebuilt, pruned_spec, tmp_path / "rebuilt.safetensors")
    _assert_same_state(load(tmp_path / "rebuilt.safetensors")[0], model)


def test_torchvision_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ArchSpec("torchvision/resnet18", {"num_classes": 3, "in_channels": 1})
    model = spec.build()
    loaded, spec2 = load(save(model, spec, tmp_path / "r18.safetensors"))
    assert spec2 == spec and loaded.conv1.in_channels == 1 and loaded.fc.out_features == 3
    _assert_same_state(loaded, model)


def test_shared_and_non_contiguous_tensors_save(model: nn.Module, tmp_path: Path) -> None:
    state = dict(model.state_dict())
    state["layer1.0.bn2.weight"] = state["layer1.0.bn1.weight"]  # aliased
    big = torch.arange(32.0)
    state["bn1.bias"] = big[::8]  # non-contiguous view of a larger storage
    state["fc.weight"] = state["fc.weight"].t().contiguous().t()  # transposed layout
    path = save(state, SPEC, tmp_path / "shared.safetensors")
    loaded, _ = load_state(path)
    _assert_same_state(loaded, state)
    assert loaded["layer1.0.bn2.weight"].data_ptr() != loaded["layer1.0.bn1.weight"].data_ptr()


def test_floating_dtype_is_kept_with_dtype_none(model: nn.Module, tmp_path: Path) -> None:
    path = save(model.half(), SPEC, tmp_path / "half.safetensors")
    loaded, _ = load(path, dtype=None)
    assert loaded.conv1.weight.dtype == torch.float16
    assert loaded.bn1.num_batches_tracked.dtype == torch.int64
    _assert_same_state(loaded, model)


def test_half_checkpoint_loads_as_float32_by_default(model: nn.Module, tmp_path: Path) -> None:
    path = save(model.half(), SPEC, tmp_path / "half.safetensors")
    loaded, _ = load(path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert loaded.bn1.num_batches_tracked.dtype == torch.int64
    assert torch.equal(loaded.conv1.weight, model.conv1.weight.float())
    out = loaded.eval()(torch.randn(2, 1, 8, 8))  # float32 CPU kernels: runs
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_extra_metadata(model: nn.Module, tmp_path: Path) -> None:
    path = save(model, SPEC, tmp_path / "m.safetensors", metadata={"accuracy": "0.93"})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["accuracy"] == "0.93"
    with pytest.raises(CheckpointError, match="metaprune.spec"):
        save(model, SPEC, tmp_path / "n.safetensors", metadata={SPEC_KEY: "{}"})
    with pytest.raises(CheckpointError, match="'n'"):
        save(model, SPEC, tmp_path / "n.safetensors", metadata={"n": 1})  # type: ignore[dict-item]


def test_save_rejects_bad_inputs(model: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="must be an ArchSpec"):
        save(model, 42, tmp_path / "a.safetensors")  # type: ignore[arg-type]
    state = dict(model.state_dict(), extra=3)
    with pytest.raises(CheckpointError, match="'extra' is a int, not a tensor"):
        save(state, SPEC, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="meta device"):
        save(SPEC.build(device="meta"), SPEC, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="spec 'cifar_resnet20': cannot build it"):
        save(model, ArchSpec("cifar_resnet20", {"depth": 3}), tmp_path / "a.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match=f"checkpoint file '{missing}' does not exist"):
        load(missing)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_spec(missing)
    with pytest.raises(CheckpointError, match="is a directory with 0 .*pass a checkpoint file"):
        load_state(tmp_path)


def test_directory_with_one_checkpoint_is_accepted(model: nn.Module, tmp_path: Path) -> None:
    save(model, SPEC, tmp_path / "out" / "model.safetensors")
    (tmp_path / "out" / "report.json").write_text("{}")
    loaded, spec = load(tmp_path / "out")  # e.g. the output directory of `metaprune prune`
    assert spec == SPEC and read_spec(tmp_path / "out") == SPEC
    _assert_same_state(loaded, model)
    save(model, SPEC, tmp_path / "out" / "other.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"2 \*\.safetensors files \('model.safetensors', 'other.safetensors'\); pass one",
    ):
        load(tmp_path / "out")


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_truncated_file(model: nn.Module, tmp_path: Path, keep: int) -> None:
    path = save(model, SPEC, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(
        CheckpointError, match=f"checkpoint '{path}' is not a readable safetensors file"
    ):
        load(path)


def test_corrupt_header(model: nn.Module, tmp_path: Path) -> None:
    path = save(model, SPEC, tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[8:24] = b"\xff" * 16  # the JSON header starts at byte 8
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load(path)


class _Payload:
    """A pickle that creates a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickles_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for i, write in enumerate([pickle.dumps, lambda obj: _torch_save_bytes(obj, tmp_path)]):
        path = tmp_path / f"evil{i}.safetensors"
        path.write_bytes(write(_Payload(marker)))
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            load(path)
        with pytest.raises(CheckpointError):
            read_spec(path)
    assert not marker.exists()


def _torch_save_bytes(obj: object, tmp_path: Path) -> bytes:
    torch.save({"model": obj}, tmp_path / "tmp.pt")
    return (tmp_path / "tmp.pt").read_bytes()


def test_missing_spec_metadata(model: nn.Module, tmp_path: Path) -> None:
    path = _raw_save(
        tmp_path / "plain.safetensors", model.state_dict(), spec_json=None, version=None
    )
    with pytest.raises(
        CheckpointError, match=r"has no 'metaprune.spec' metadata.*found metadata keys \[\]"
    ):
        load(path)


@pytest.mark.parametrize(
    ("spec_json", "version", "match"),
    [
        (SPEC.to_json(), None, "'metaprune.format_version' is None, expected '1'"),
        (SPEC.to_json(), "2", "'metaprune.format_version' is '2', expected '1'"),
        ("{oops", "1", "metaprune.spec.*not valid JSON"),
        (dict(SPEC.to_json(), name="evil_net"), "1", "unknown model 'evil_net'"),
        (dict(SPEC.to_json(), name="cifar_resnet2"), "1", "did you mean .*'cifar_resnet20'"),
        (dict(SPEC.to_json(), format_version=7), "1", "format_version must be 1 \\(found 7\\)"),
    ],
)
def test_invalid_spec_metadata(
    model: nn.Module, tmp_path: Path, spec_json: object, version: str | None, match: str
) -> None:
    path = _raw_save(tmp_path / "m.safetensors", model.state_dict(), spec_json, version)
    with pytest.raises(CheckpointError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)


def test_state_mismatches_name_key_expected_and_found(model: nn.Module, tmp_path: Path) -> None:
    state = dict(model.state_dict())
    del state["fc.bias"]
    state["head.weight"] = torch.zeros(2, 2)
    state["conv1.weight"] = torch.zeros(5, 1, 3, 3)
    state["bn1.num_batches_tracked"] = torch.zeros((), dtype=torch.float32)
    state["bn1.running_mean"] = torch.zeros(4, dtype=torch.int32)
    path = _raw_save(tmp_path / "bad.safetensors", state, SPEC.to_json())
    with pytest.raises(CheckpointError) as info:
        load(path)
    msg = str(info.value)
    assert f"checkpoint '{path}'" in msg and "architecture 'cifar_resnet20' (5 problems)" in msg
    assert "missing key 'fc.bias' (expected shape (4,), dtype torch.float32)" in msg
    assert "unexpected key 'head.weight' (shape (2, 2))" in msg
    assert "key 'conv1.weight': expected shape (4, 1, 3, 3), found (5, 1, 3, 3)" in msg
    assert "key 'bn1.num_batches_tracked': expected torch.int64, found torch.float32" in msg
    assert "key 'bn1.running_mean': expected a floating dtype, found torch.int32" in msg
    with pytest.raises(CheckpointError, match="cannot save checkpoint .*5 problems"):
        save(state, SPEC, tmp_path / "bad2.safetensors")


def test_many_problems_are_summarised(model: nn.Module, tmp_path: Path) -> None:
    path = _raw_save(tmp_path / "empty.safetensors", {"x": torch.zeros(1)}, SPEC.to_json())
    n_expected = len(model.state_dict()) + 1
    with pytest.raises(
        CheckpointError, match=rf"\({n_expected} problems\).*\.\.\. and {n_expected - 8} more$"
    ):
        load_state(path)


def test_load_falls_back_when_meta_construction_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from metaprune.testing.hostile import META_HOSTILE

    spec = ArchSpec(META_HOSTILE)  # sized in a bounded child process, then built on the CPU
    with pytest.raises(NotImplementedError):
        spec.build(device="meta")
    torch.manual_seed(0)
    model = spec.build()
    loaded, _ = checkpoint.load(save(model, spec, tmp_path / "m.safetensors"))
    _assert_same_state(loaded, model)
    assert torch.equal(loaded.scale, torch.ones(3))


def test_loaded_tensors_are_aligned_as_fresh_allocations(tmp_path) -> None:
    # safetensors' views sit at the file's offsets; an AVX-512 convolution over a
    # misaligned weight can differ in the last bit from the saved model's output
    spec = ArchSpec("torchvision/mnasnet0_5", {"num_classes": 3})
    torch.manual_seed(0)
    model = spec.build().eval()
    save(model, spec, tmp_path / "m.safetensors")
    state, _ = checkpoint.load_state(tmp_path / "m.safetensors")
    assert len(state) == len(model.state_dict())
    assert all(t.data_ptr() % 64 == 0 for t in state.values() if t.numel())
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    loaded, _ = load(tmp_path / "m.safetensors")
    assert all(t.data_ptr() % 64 == 0 for t in (*loaded.parameters(), *loaded.buffers()) if t.numel())


def test_modules_that_check_their_state_version_load(tmp_path) -> None:
    # torchvision's MNASNet refuses a state dict without module versions
    spec = ArchSpec("torchvision/mnasnet0_5", {"num_classes": 3})
    torch.manual_seed(0)
    model = spec.build().eval()
    save(model, spec, tmp_path / "m.safetensors")
    loaded, _ = load(tmp_path / "m.safetensors")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
