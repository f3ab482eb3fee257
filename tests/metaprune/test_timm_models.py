"""Tests for metaprune.models.timm_models, the architecture sources and preferred inputs."""

from __future__ import annotations

import pytest
import torch

from metaprune.errors import InvalidInputError, LimitExceededError
from metaprune.limits import Limits, check_spec
from metaprune.models import (
    ArchSpec,
    SpecError,
    UnknownModelError,
    create_model,
    is_model,
    list_models,
    list_sources,
    preferred_input,
    set_enabled_sources,
    timm_models,
)
from metaprune.models.registry import SOURCES_ENV

timm = pytest.importorskip("timm")


@pytest.fixture(autouse=True)
def _all_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SOURCES_ENV, raising=False)


def test_timm_names_are_accepted_from_timms_own_registry() -> None:
    assert list_sources() == ["builtin", "torchvision", "timm"]
    assert is_model("timm/resnet18") and is_model("timm/vit_tiny_patch16_224")
    assert not is_model("timm/resnet18.a1_in1k")  # a pretrained tag names weights
    assert not is_model("timm/no_such_net") and not is_model("timm/") and not is_model(7)
    assert not any(n.startswith("timm/") for n in list_models())  # listed by timm, not us
    model = create_model("timm/resnet18", num_classes=3, in_chans=1)
    assert model.fc.out_features == 3 and model.conv1.in_channels == 1
    assert ArchSpec("timm/resnet18", {"num_classes": 3}).to_json()["name"] == "timm/resnet18"


def test_timm_specs_are_sized_under_limits_before_building() -> None:
    spec = ArchSpec("timm/vit_tiny_patch16_224", {"img_size": 64, "num_classes": 10})
    size = check_spec(spec, input_shape=(3, 64, 64))
    assert size.params == 5_491_786 and size.macs == 94_313_518
    with pytest.raises(LimitExceededError, match="max_params"):
        check_spec(spec, Limits(max_params=1_000_000))
    with pytest.raises(LimitExceededError, match="max_params"):  # a huge img_size: pos_embed
        check_spec(ArchSpec("timm/vit_tiny_patch16_224", {"img_size": 100_000}))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pretrained": True}, "'pretrained' is not accepted \\(nothing is ever downloaded"),
        ({"checkpoint_path": "/etc/passwd"}, "kwarg 'checkpoint_path' is not accepted"),
        ({"pretrained_cfg_overlay": {"file": "x"}}, "kwarg 'pretrained_cfg_overlay'"),
        ({"num_classes": 0}, "num_classes must be a positive int \\(found 0\\)"),
        ({"num_classes": True}, "num_classes must be a positive int"),
        ({"img_size": "64"}, "img_size must be a positive int or a list of two"),
        ({"img_size": [64, 64, 64]}, "img_size must be"),
        ({"drop_rate": 1.0}, "drop_rate must be a number in \\[0, 1\\)"),
        ({"in_chans": 2**40}, "in_chans must be a positive int"),
    ],
)
def test_timm_kwargs_are_bounded_and_named(kwargs: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        ArchSpec("timm/resnet18", kwargs).build("meta")


def test_img_size_as_a_pair() -> None:
    model = ArchSpec("timm/vit_tiny_patch16_224", {"img_size": [32, 64]}).build("meta")
    assert tuple(model.pos_embed.shape) == (1, 1 + 2 * 4, 192)


def test_hints_name_the_same_model_in_other_sources() -> None:
    with pytest.raises(UnknownModelError) as info:
        ArchSpec("resnet18")
    assert "did you mean 'torchvision/resnet18', 'timm/resnet18'?" in str(info.value)
    assert "cifar_resnet110" not in str(info.value)
    with pytest.raises(UnknownModelError, match="did you mean 'timm/resnet18'"):
        ArchSpec("timm/resnet181")
    assert "timm/<name> for any name in timm's own registry" in str(info.value)


def test_operator_can_switch_timm_off(monkeypatch: pytest.MonkeyPatch) -> None:
    set_enabled_sources(["builtin", "torchvision"])
    try:
        assert list_sources() == ["builtin", "torchvision"]
        assert not is_model("timm/resnet18") and is_model("torchvision/resnet18")
        with pytest.raises(UnknownModelError) as info:
            ArchSpec("timm/resnet18")
        text = str(info.value)
        assert "architecture source 'timm' is switched off here" in text
        assert "did you mean 'torchvision/resnet18'?" in text
        set_enabled_sources(["builtin"])
        assert not is_model("torchvision/resnet18") and is_model("cifar_resnet20")
        with pytest.raises(ValueError, match="unknown architecture source"):
            set_enabled_sources(["caffe"])
    finally:
        set_enabled_sources(None)
    assert is_model("timm/resnet18")


def test_missing_timm_is_a_clear_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_timm() -> None:
        raise ImportError("No module named 'timm'")

    monkeypatch.setattr(timm_models, "_timm", no_timm)
    timm_models.timm_model_names.cache_clear()
    try:
        assert "timm" not in list_sources()
        with pytest.raises(UnknownModelError, match="timm is not installed"):
            ArchSpec("timm/resnet18")
    finally:
        timm_models.timm_model_names.cache_clear()


def test_preferred_input() -> None:
    vit = preferred_input(ArchSpec("timm/vit_tiny_patch16_224", {"img_size": 64}))
    assert vit is not None and vit.input_size == (3, 64, 64) and vit.mean == (0.5, 0.5, 0.5)
    gray = preferred_input(ArchSpec("timm/resnet18", {"in_chans": 1}))
    assert gray is not None and gray.input_size == (1, 224, 224) and gray.mean is None
    tv = preferred_input(ArchSpec("torchvision/inception_v3"))
    assert tv is not None and tv.input_size == (3, 299, 299)
    assert tv.std == pytest.approx((0.229, 0.224, 0.225))
    assert preferred_input(ArchSpec("cifar_resnet20")) is None


def test_timm_spec_round_trips_through_a_checkpoint(tmp_path) -> None:
    import metaprune

    spec = ArchSpec("timm/resnet18", {"num_classes": 4, "in_chans": 1})
    torch.manual_seed(0)
    model = spec.build().eval()
    metaprune.save(model, spec, tmp_path / "m.safetensors")
    loaded, loaded_spec = metaprune.load(tmp_path / "m.safetensors")
    x = torch.randn(1, 1, 32, 32)
    assert loaded_spec == spec
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
    with pytest.raises(InvalidInputError):
        check_spec({"format_version": 1, "name": "timm/resnet18", "kwargs": {"pretrained": True}})
