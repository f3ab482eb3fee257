"""``metaprune import`` (metaprune/importer.py): the one door for foreign weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from metaprune import checkpoint
from metaprune.cli import main
from metaprune.errors import LimitExceededError
from metaprune.importer import WeightsImportError, import_weights
from metaprune.limits import Limits
from metaprune.models import ArchSpec, UnknownModelError
from metaprune.models import registry as model_registry

SPEC = ArchSpec("cifar_resnet20", {"width": 0.25, "num_classes": 4})


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return SPEC.build().eval()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_safetensors_state_dict(model: torch.nn.Module, tmp_path: Path) -> None:
    src = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(src))
    result = import_weights(
        src, tmp_path / "out.safetensors", arch=SPEC.name, arch_kwargs=SPEC.kwargs
    )
    assert result.source_format == "safetensors" and result.notes == ()
    assert result.tensors == len(model.state_dict())
    loaded, spec = checkpoint.load(result.path)
    assert spec == SPEC
    _same(model, loaded)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), loaded.eval()(x))


@pytest.mark.parametrize("zipped", [True, False])
def test_torch_save_file(model: torch.nn.Module, tmp_path: Path, zipped: bool) -> None:
    src = tmp_path / "w.pth"
    torch.save(model.state_dict(), src, _use_new_zipfile_serialization=zipped)
    result = import_weights(
        src, tmp_path / "out.safetensors", arch=SPEC.name, arch_kwargs=SPEC.kwargs
    )
    assert result.source_format == "torch.save"
    _same(model, checkpoint.load(result.path)[0])
    meta = checkpoint.read_spec(result.path)
    assert meta == SPEC


def test_prefix_is_offered_not_guessed(model: torch.nn.Module, tmp_path: Path) -> None:
    src = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, src)
    out = tmp_path / "out.safetensors"
    n = len(model.state_dict())
    with pytest.raises(WeightsImportError) as info:
        import_weights(src, out, arch=SPEC.name, arch_kwargs=SPEC.kwargs)
    text = str(info.value)
    assert f"{n} missing, {n} unexpected, 0 with another shape of {n} expected keys" in text
    assert "'conv1.weight' (4, 3, 3, 3)" in text and "'module.conv1.weight' (4, 3, 3, 3)" in text
    assert f"... and {n - 8} more" in text  # bounded lists
    assert f"--strip-prefix module. ({n} of {n} keys match then)" in text
    assert not out.exists()
    result = import_weights(
        src, out, arch=SPEC.name, arch_kwargs=SPEC.kwargs, strip_prefix="module."
    )
    _same(model, checkpoint.load(result.path)[0])
    with pytest.raises(
        WeightsImportError, match=r"--strip-prefix 'model\.': \d+ of \d+ keys do not"
    ):
        import_weights(src, out, arch=SPEC.name, arch_kwargs=SPEC.kwargs, strip_prefix="model.")


def test_mismatches_listed_by_name(model: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(model.state_dict())
    del state["bn1.weight"]
    state["extra.weight"] = torch.ones(3)
    src = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(src))
    with pytest.raises(WeightsImportError) as info:  # num_classes 10, the file has 4
        import_weights(src, tmp_path / "o.safetensors", arch=SPEC.name, arch_kwargs={"width": 0.25})
    text = str(info.value)
    assert "1 missing, 1 unexpected, 2 with another shape" in text
    assert "missing 'bn1.weight' (4,)" in text
    assert "unexpected 'extra.weight' (3,)" in text
    assert "'fc.weight' expected (10, 16) found (4, 16)" in text
    assert "'fc.bias' expected (10,) found (4,)" in text
    assert "a different class count?" in text and "num_classes" in text
    assert "strip-prefix" not in text


def test_missing_bn_counters_are_filled_and_reported(
    model: torch.nn.Module, tmp_path: Path
) -> None:
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    src = tmp_path / "old.pth"
    torch.save(state, src)
    result = import_weights(
        src, tmp_path / "o.safetensors", arch=SPEC.name, arch_kwargs=SPEC.kwargs
    )
    assert len(result.notes) == 1 and "num_batches_tracked" in result.notes[0]
    loaded = checkpoint.load(result.path)[0]
    assert int(loaded.bn1.num_batches_tracked) == 0


def test_nested_training_checkpoint(model: torch.nn.Module, tmp_path: Path) -> None:
    src = tmp_path / "train.ckpt"
    torch.save({"epoch": 3, "state_dict": model.state_dict(), "lr": 0.1}, src)
    with pytest.raises(
        WeightsImportError, match="not a flat state dict: 3 entries.*--state-key state_dict"
    ):
        import_weights(src, tmp_path / "o.safetensors", arch=SPEC.name, arch_kwargs=SPEC.kwargs)
    with pytest.raises(WeightsImportError, match="--state-key 'nope' is not a mapping"):
        import_weights(src, tmp_path / "o.safetensors", arch=SPEC.name, state_key="nope")
    result = import_weights(
        src,
        tmp_path / "o.safetensors",
        arch=SPEC.name,
        arch_kwargs=SPEC.kwargs,
        state_key="state_dict",
    )
    _same(model, checkpoint.load(result.path)[0])


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.marker),))


def test_code_in_a_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    src = tmp_path / "evil.pth"
    torch.save({"w": _Payload(str(marker))}, src)
    with pytest.raises(WeightsImportError, match=r"torch.load\(weights_only=True\)"):
        import_weights(src, tmp_path / "o.safetensors", arch=SPEC.name)
    assert not marker.exists()


def test_non_finite_weights_are_refused(model: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(model.state_dict())
    state["conv1.weight"] = state["conv1.weight"].clone()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    src = tmp_path / "nan.pth"
    torch.save(state, src)
    with pytest.raises(
        WeightsImportError, match=r"1 tensor\(s\) hold NaN or Inf values \('conv1.weight'\)"
    ):
        import_weights(src, tmp_path / "o.safetensors", arch=SPEC.name, arch_kwargs=SPEC.kwargs)
    assert not (tmp_path / "o.safetensors").exists()


def test_no_architecture(model: torch.nn.Module, tmp_path: Path) -> None:
    src = tmp_path / "w.pth"
    torch.save(model.state_dict(), src)
    with pytest.raises(WeightsImportError, match="carry no architecture: pass --arch NAME"):
        import_weights(src, tmp_path / "o.safetensors")
    with pytest.raises(UnknownModelError, match="unknown model 'resnet18'"):
        import_weights(src, tmp_path / "o.safetensors", arch="resnet18")
    with pytest.raises(LimitExceededError, match="max_params"):
        import_weights(
            src, tmp_path / "o.safetensors", arch=SPEC.name, limits=Limits(max_params=1000)
        )
    with pytest.raises(LimitExceededError, match="max_upload_bytes"):
        import_weights(
            src, tmp_path / "o.safetensors", arch=SPEC.name, limits=Limits(max_upload_bytes=100)
        )
    with pytest.raises(WeightsImportError, match="does not exist"):
        import_weights(tmp_path / "nope.pth", tmp_path / "o.safetensors", arch=SPEC.name)


def _cli_error(argv: list[str]) -> str:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 2
    return err.getvalue()


def _hub_folder(path: Path, model: torch.nn.Module, config: dict) -> Path:
    path.mkdir()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors")
    )
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_hub_folder_is_recognised(model: torch.nn.Module, tmp_path: Path, monkeypatch) -> None:
    # a stand-in timm entry: the hub folder maps "architecture" to "timm/<architecture>"
    monkeypatch.setitem(
        model_registry._REGISTRY, "timm/tiny_test_net",
        lambda **kw: model_registry.create_model("cifar_resnet20", width=0.25, **kw),
    )  # fmt: skip
    config = {
        "architecture": "tiny_test_net.a1_in1k", "num_classes": 4, "num_features": 16,
        "pretrained_cfg": {"input_size": [3, 8, 8], "mean": [0.5] * 3, "std": [0.25] * 3},
    }  # fmt: skip
    hub = _hub_folder(tmp_path / "hub", model, config)
    line = _cli_error(["info", str(hub)])  # a hub folder given to prune/eval/info
    assert (
        "hub folder with config.json" in line
        and "'metaprune import hub -o hub.safetensors'" in line
    )
    result = import_weights(hub, tmp_path / "o.safetensors")
    assert result.spec == ArchSpec("timm/tiny_test_net", {"num_classes": 4})
    assert result.source_format == "hub folder (model.safetensors)"
    _same(model, checkpoint.load(result.path)[0])
    from safetensors import safe_open

    with safe_open(str(result.path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["pretrained_cfg"])["input_size"] == [3, 8, 8]
    assert meta["imported_format"] == "hub folder (model.safetensors)"
    # --arch wins over config.json
    result = import_weights(
        hub, tmp_path / "p.safetensors", arch=SPEC.name, arch_kwargs=SPEC.kwargs
    )
    assert result.spec == SPEC
    (hub / "config.json").write_text(json.dumps({"architecture": "no_such_net", "num_classes": 4}))
    with pytest.raises(
        WeightsImportError,
        match="names architecture 'no_such_net', read as 'timm/no_such_net'.*pass --arch",
    ):
        import_weights(hub, tmp_path / "o.safetensors")
    (hub / "config.json").write_text(json.dumps({"num_classes": 4}))
    with pytest.raises(WeightsImportError, match="no 'architecture' string"):
        import_weights(hub, tmp_path / "o.safetensors")


def test_cli_import_and_the_refusals_of_prune_eval_info(
    model: torch.nn.Module, tmp_path: Path, capsys
) -> None:
    src = tmp_path / "resnet.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, src)
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    legacy = tmp_path / "legacy.pt"
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    for path, what in [(src, "a zip archive as torch.save writes"), (legacy, "a Python pickle"),
                       (plain, "a plain state dict")]:  # fmt: skip
        for argv in (["info", str(path)], ["eval", str(path), "--dataset", "synthetic"],
                     ["prune", str(path), "--dataset", "synthetic", "-o", str(tmp_path / "x")]):  # fmt: skip
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert what in err, (argv, err)
            assert "header claims" not in err
            assert f"metaprune import {path.name} --arch" in err, err
    out = tmp_path / "resnet.safetensors"
    argv = [
        "import",
        str(src),
        "--arch",
        SPEC.name,
        "--arch-kwargs",
        json.dumps(SPEC.kwargs),
        "-o",
        str(out),
    ]
    assert main(argv) == 2
    assert "--strip-prefix module." in capsys.readouterr().err
    assert main([*argv, "--strip-prefix", "module."]) == 0
    assert f"wrote {out}: cifar_resnet20" in capsys.readouterr().out
    assert main(["info", str(out), "--image-size", "8"]) == 0
    assert "architecture  cifar_resnet20" in capsys.readouterr().out
    assert main(["import", str(src), "--arch-kwargs", "[1]", "-o", str(out)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err
