"""Tests for metaprune.models: registry, CIFAR ResNet/VGG, torchvision models, specs, plans."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torch.fx
import torch_pruning as tp
import torchvision
from torch import nn

from metaprune.models import (
    ArchSpec,
    SpecError,
    UnknownModelError,
    apply_channel_plan,
    channel_plan_of,
    create_model,
    list_models,
    register_model,
    structural_attrs,
)
from metaprune.models import registry as registry_module
from metaprune.models.cifar_resnet import CifarResNet
from metaprune.models.torchvision_models import replace_first_conv

CIFAR_MODELS = list_models("cifar_*")
RESNET_DEPTHS = {
    "cifar_resnet20": 20,
    "cifar_resnet32": 32,
    "cifar_resnet56": 56,
    "cifar_resnet110": 110,
}


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A copy of the model registry that tests may add to; restored afterwards."""
    reg = dict(registry_module._REGISTRY)
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    return reg


def _prune(model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]) -> None:
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=ignored,
    )
    pruner.step()


# --------------------------------------------------------------------------- registry


def test_list_models_is_sorted_and_filters() -> None:
    names = list_models()
    assert names == sorted(names)
    assert len(names) == len(set(names))
    assert CIFAR_MODELS == [
        "cifar_resnet110",
        "cifar_resnet20",
        "cifar_resnet32",
        "cifar_resnet56",
        "cifar_vgg11_bn",
        "cifar_vgg19_bn",
    ]
    assert list_models("cifar_vgg*") == ["cifar_vgg11_bn", "cifar_vgg19_bn"]
    assert "torchvision/resnet18" in list_models("torchvision/*")
    assert list_models("no_such_*") == []


def test_unknown_model_error_names_close_matches() -> None:
    with pytest.raises(UnknownModelError) as info:
        create_model("cifar_resnet21")
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    assert "'cifar_resnet21'" in str(err)
    assert "cifar_resnet20" in str(err)
    with pytest.raises(KeyError, match="unknown model 'zzz'"):
        create_model("zzz")


def test_register_model_rejects_duplicates_and_empty(scratch_registry: dict) -> None:
    @register_model("tiny_test_net")
    def tiny(*, num_classes: int = 2) -> nn.Module:
        return nn.Linear(3, num_classes)

    assert "tiny_test_net" in list_models()
    assert create_model("tiny_test_net", num_classes=4).out_features == 4
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_test_net")(tiny)
    with pytest.raises(ValueError, match="non-empty"):
        register_model("")


# --------------------------------------------------------------------------- CIFAR families


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_model_shapes_and_kwargs(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=1, width=0.25).eval()
    for size in (8, 17):
        out = model(torch.randn(2, 1, size, size))
        assert out.shape == (2, 7)
        assert torch.isfinite(out).all()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 1
    assert all(c.bias is None for c in convs)
    assert all(m.out_channels >= 1 for m in convs)
    head = model.fc if hasattr(model, "fc") else model.classifier
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert head.in_features == (16 if name.startswith("cifar_resnet") else 128)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_model_is_fx_traceable_and_seeded(name: str) -> None:
    torch.manual_seed(1)
    model = create_model(name, width=0.25).eval()
    torch.manual_seed(1)
    again = create_model(name, width=0.25).eval()
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(traced(x), model(x))


@pytest.mark.parametrize("name", [n for n in CIFAR_MODELS if n.startswith("cifar_resnet")])
def test_cifar_resnet_structure(name: str) -> None:
    model = create_model(name)
    assert isinstance(model, CifarResNet)
    n = (RESNET_DEPTHS[name] - 2) // 6
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [n, n, n]
    kxk = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(kxk) == 6 * n + 1  # depth = kxk convs + fc
    assert [
        m.out_channels
        for m in (model.layer1[0].conv1, model.layer2[0].conv1, model.layer3[0].conv1)
    ] == [
        16,
        32,
        64,
    ]
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer3[0].conv1.stride == (2, 2)
    assert model.layer1[0].conv1.stride == (1, 1) and model.layer2[1].conv1.stride == (1, 1)
    for stage in (model.layer1, model.layer2, model.layer3):
        for j, block in enumerate(stage):
            assert isinstance(block.shortcut, nn.Sequential)
            projection = stage is not model.layer1 and j == 0
            assert len(block.shortcut) == (2 if projection else 0)
            if projection:
                conv, bn = block.shortcut
                assert (
                    conv.kernel_size == (1, 1)
                    and conv.bias is None
                    and isinstance(bn, nn.BatchNorm2d)
                )


def test_cifar_resnet20_parameter_count_and_width() -> None:
    # 3x3 convs + BN + fc of ResNet-20 with two 1x1-conv+BN projections (16->32, 32->64)
    assert sum(p.numel() for p in create_model("cifar_resnet20").parameters()) == 272_474
    half = create_model("cifar_resnet20", width=0.5)
    assert [half.conv1.out_channels, half.layer2[0].conv2.out_channels, half.fc.in_features] == [
        8,
        16,
        32,
    ]
    tiny = create_model("cifar_resnet20", width=0.01)
    assert [tiny.conv1.out_channels, tiny.layer3[0].conv2.out_channels] == [1, 1]
    assert tiny(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_cifar_vgg_structure() -> None:
    vgg11, vgg19 = create_model("cifar_vgg11_bn"), create_model("cifar_vgg19_bn")
    for model, n_conv in ((vgg11, 8), (vgg19, 16)):
        convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
        pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
        assert len(convs) == n_conv and len(pools) == 5
        assert all(p.ceil_mode for p in pools)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == n_conv
        assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
        assert model.classifier.in_features == 512
    assert create_model("cifar_vgg11_bn", width=0.5).classifier.in_features == 256


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 0.0},
        {"width": -1.0},
        {"num_classes": 0},
        {"in_channels": 0},
        {"num_classes": True},
    ],
)
@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_vgg11_bn"])
def test_cifar_models_reject_bad_kwargs(name: str, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must be"):
        create_model(name, **kwargs)
    with pytest.raises(TypeError):
        create_model(name, depth=3)


# --------------------------------------------------------------------------- torchvision


def test_torchvision_registry_is_exactly_the_classification_models() -> None:
    expected = {
        "torchvision/" + n for n in torchvision.models.list_models(module=torchvision.models)
    }
    assert set(list_models("torchvision/*")) == expected
    assert len(expected) > 50
    for excluded in (
        "fasterrcnn_resnet50_fpn",
        "deeplabv3_resnet50",
        "r3d_18",
        "raft_large",
        "quantized_resnet18",
    ):
        assert "torchvision/" + excluded not in expected
    assert {"torchvision/resnet18", "torchvision/mobilenet_v2", "torchvision/vit_b_16"} <= expected


@pytest.mark.parametrize(
    ("name", "stem"),
    [("torchvision/resnet18", "conv1"), ("torchvision/mobilenet_v2", "features.0.0")],
)
def test_torchvision_models_build_with_kwargs_and_in_channels(name: str, stem: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_channels=1).eval()
    conv = model.get_submodule(stem)
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    rgb = create_model(name).eval()
    assert rgb.get_submodule(stem).in_channels == 3
    assert rgb(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    assert create_model(name, num_classes=5, in_channels=1).get_submodule(stem).weight.shape[1] == 1


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("torchvision/vit_b_16", 224),
        ("torchvision/swin_t", 224),
        ("torchvision/efficientnet_b0", 64),
    ],
)
def test_torchvision_in_channels_on_meta_device(name: str, size: int) -> None:
    with torch.device("meta"):
        model = create_model(name, num_classes=3, in_channels=2)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 2
    out = model.eval()(torch.empty(1, 2, size, size, device="meta"))
    assert out.shape == (1, 3)


def test_torchvision_rejects_weights_and_impossible_in_channels() -> None:
    with pytest.raises(ValueError, match="weights=None"):
        create_model("torchvision/resnet18", weights="DEFAULT")
    with pytest.raises(ValueError, match="transform_input"):
        create_model("torchvision/googlenet", in_channels=1, transform_input=True)
    with pytest.raises(ValueError, match="in_channels must be"):
        create_model("torchvision/resnet18", in_channels=0)
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        replace_first_conv(nn.Sequential(nn.Linear(3, 3)), 1, "mlp")
    with pytest.raises(ValueError, match="in_channels=1, groups=1"):
        replace_first_conv(nn.Sequential(nn.Conv2d(1, 4, 3)), 2, "gray")
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.Conv2d(4, 4, 1))
    assert replace_first_conv(model, 5) == "0"
    assert model[0].in_channels == 5 and model[0].bias is not None and model[1].in_channels == 4


# --------------------------------------------------------------------------- ArchSpec


def test_arch_spec_json_round_trip() -> None:
    spec = ArchSpec("cifar_resnet20", {"num_classes": 4, "width": 0.5})
    data = spec.to_json()
    assert data == {
        "format_version": 1,
        "name": "cifar_resnet20",
        "kwargs": {"num_classes": 4, "width": 0.5},
    }
    assert ArchSpec.from_json(data) == spec
    assert ArchSpec.from_json(json.dumps(data)) == spec
    assert hash(ArchSpec.from_json(data)) == hash(spec)
    planned = ArchSpec("cifar_resnet20", {}, {"fc": {"in_features": 32, "out_features": 10}})
    assert planned.to_json()["channel_plan"] == {"fc": {"in_features": 32, "out_features": 10}}
    assert ArchSpec.from_json(json.loads(json.dumps(planned.to_json()))) == planned
    assert ArchSpec("cifar_resnet20", {}, {}).channel_plan is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "cifar_resnet32"  # type: ignore[misc]


def test_arch_spec_copies_kwargs_and_builds() -> None:
    kwargs = {"num_classes": 3, "in_channels": 1}
    spec = ArchSpec("cifar_vgg11_bn", kwargs)
    kwargs["num_classes"] = 99
    assert spec.kwargs == {"num_classes": 3, "in_channels": 1}
    spec.to_json()["kwargs"]["num_classes"] = 42
    assert spec.kwargs["num_classes"] == 3
    torch.manual_seed(0)
    built = spec.build()
    torch.manual_seed(0)
    direct = create_model("cifar_vgg11_bn", num_classes=3, in_channels=1)
    assert all(
        torch.equal(a, b) for a, b in zip(built.state_dict().values(), direct.state_dict().values())
    )
    meta = spec.build(device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert spec.skeleton().classifier.weight.shape == (3, 512)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"format_version": 1, "name": "os.system", "kwargs": {}}, "unknown model 'os.system'"),
        ({"format_version": 2, "name": "cifar_resnet20"}, "format_version must be 1 \\(found 2\\)"),
        ({"name": "cifar_resnet20"}, "format_version must be 1 \\(found None\\)"),
        (
            {"format_version": 1, "name": "cifar_resnet20", "module": "os"},
            "unknown key\\(s\\) \\['module'\\]",
        ),
        ({"format_version": 1}, "no 'name'"),
        ({"format_version": 1, "name": 3}, "name must be a string"),
        (
            {"format_version": 1, "name": "cifar_resnet20", "kwargs": [1]},
            "kwargs must be a mapping",
        ),
        (
            {"format_version": 1, "name": "cifar_resnet20", "kwargs": {"width": float("nan")}},
            "plain JSON",
        ),
        (
            {
                "format_version": 1,
                "name": "cifar_resnet20",
                "channel_plan": {"fc": {"in_features": 0}},
            },
            "positive int",
        ),
        (
            {
                "format_version": 1,
                "name": "cifar_resnet20",
                "channel_plan": {"fc": {"in_features": True}},
            },
            "positive int",
        ),
        (
            {"format_version": 1, "name": "cifar_resnet20", "channel_plan": {"fc": {}}},
            "non-empty mapping",
        ),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_arch_spec_rejects_invalid_json(data: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ArchSpec.from_json(data)  # type: ignore[arg-type]


def test_arch_spec_rejects_non_json_kwargs() -> None:
    with pytest.raises(SpecError, match="plain JSON"):
        ArchSpec("cifar_resnet20", {"init": object()})
    with pytest.raises(UnknownModelError):
        ArchSpec("not_a_model")


# --------------------------------------------------------------------------- channel plans


class _Zoo(nn.Module):
    """One module of every type a channel plan supports, sized by ``c``."""

    def __init__(self, c: int, heads: int, kdim: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.inorm = nn.InstanceNorm2d(c, affine=True, track_running_stats=True)
        self.gn = nn.GroupNorm(2, c)
        self.up = nn.ConvTranspose2d(c, c // 2, 2, stride=2)
        self.ln = nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, heads, kdim=kdim, vdim=kdim, batch_first=True)
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gn(self.inorm(self.dw(self.bn(self.conv(x)))))
        y = self.up(y).mean((2, 3))  # (N, c // 2), exercises the transposed conv
        tokens = self.ln(self.conv(x).flatten(2).transpose(1, 2))  # (N, HW, c)
        kv = tokens if self.attn.kdim == self.attn.embed_dim else tokens[..., : self.attn.kdim]
        att, _ = self.attn(tokens, kv, kv)
        return self.fc(att.mean(1)) + y.sum(1, keepdim=True)


@pytest.mark.parametrize("kdim", [None, 4])
def test_channel_plan_resizes_every_module_type(kdim: int | None) -> None:
    torch.manual_seed(0)
    base, small = _Zoo(8, 4, kdim), _Zoo(4, 2, kdim)
    plan = channel_plan_of(small, base)
    assert plan["conv"] == {"in_channels": 3, "out_channels": 4, "groups": 1}
    assert plan["dw"] == {"in_channels": 4, "out_channels": 4, "groups": 4}
    assert plan["up"] == {"in_channels": 4, "out_channels": 2, "groups": 1}
    assert plan["bn"] == plan["inorm"] == {"num_features": 4}
    assert plan["gn"] == {"num_channels": 4, "num_groups": 2}
    assert plan["ln"] == {"normalized_shape": [4]}
    assert plan["attn"] == {"embed_dim": 4, "num_heads": 2, "head_dim": 2, "kdim": 4, "vdim": 4}
    assert plan["attn.out_proj"] == {"in_features": 4, "out_features": 4}
    assert plan["fc"] == {"in_features": 4, "out_features": 5}
    assert set(plan) == {
        "conv",
        "bn",
        "dw",
        "inorm",
        "gn",
        "up",
        "ln",
        "attn",
        "attn.out_proj",
        "fc",
    }
    json.dumps(plan)  # plain data
    old_conv = base.conv.weight.detach().clone()
    resized = apply_channel_plan(base, json.loads(json.dumps(plan)))
    assert resized is base
    assert torch.equal(base.conv.weight, old_conv[:4])  # keeps the overlapping slice
    assert channel_plan_of(base, small) == {}
    assert {k: v.shape for k, v in base.state_dict().items()} == {
        k: v.shape for k, v in small.state_dict().items()
    }
    base.load_state_dict(small.state_dict(), strict=True)
    assert base.attn._qkv_same_embed_dim == small.attn._qkv_same_embed_dim
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(base.eval()(x), small.eval()(x))
    # growing works too (and switches packed -> separate q/k/v projections when kdim=4)
    big = _Zoo(8, 4, kdim)
    grown = apply_channel_plan(_Zoo(4, 2, kdim), channel_plan_of(big, _Zoo(4, 2, kdim)))
    assert grown.attn._qkv_same_embed_dim == big.attn._qkv_same_embed_dim
    grown.load_state_dict(big.state_dict(), strict=True)
    assert torch.equal(grown.eval()(x), big.eval()(x))


def test_channel_plan_keeps_dtype_device_and_requires_grad() -> None:
    model = _Zoo(8, 4).double()
    model.fc.weight.requires_grad_(False)
    apply_channel_plan(model, {"fc": {"in_features": 4}, "bn": {"num_features": 2}})
    assert model.fc.weight.shape == (5, 4) and model.fc.weight.dtype == torch.float64
    assert not model.fc.weight.requires_grad and model.fc.bias.requires_grad
    assert isinstance(model.fc.weight, nn.Parameter)
    assert model.bn.running_var.shape == (2,) and model.bn.running_var.dtype == torch.float64
    assert "running_var" in model.bn._buffers and torch.equal(
        model.bn.running_var, torch.ones(2, dtype=torch.float64)
    )
    assert structural_attrs(model.fc) == {"in_features": 4, "out_features": 5}
    assert structural_attrs(nn.ReLU()) is None


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        ({"nope": {"out_channels": 1}}, "module 'nope' not found"),
        ({"conv": {"num_features": 2}}, "no structural attribute\\(s\\) \\['num_features'\\]"),
        ({"dw": {"groups": 3}}, "divisible by groups=3"),
        ({"gn": {"num_groups": 3}}, "not divisible by num_groups=3"),
        ({"attn": {"num_heads": 3}}, "not divisible by num_heads=3"),
        ({"conv": {"out_channels": -1}}, "positive int"),
        ({"ln": {"normalized_shape": []}}, "non-empty list"),
    ],
)
def test_apply_channel_plan_errors(plan: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        apply_channel_plan(_Zoo(8, 4), plan)


def test_channel_plan_of_rejects_different_architectures() -> None:
    with pytest.raises(ValueError, match="no counterpart"):
        channel_plan_of(create_model("cifar_resnet32"), create_model("cifar_resnet20"))
    with pytest.raises(ValueError, match="lacks 24 structural module"):
        channel_plan_of(create_model("cifar_resnet20"), create_model("cifar_resnet32"))
    assert channel_plan_of(create_model("cifar_resnet20"), create_model("cifar_resnet20")) == {}


@pytest.mark.parametrize(
    ("name", "kwargs", "size"),
    [
        ("cifar_resnet20", {}, 32),
        ("cifar_vgg11_bn", {"width": 0.25, "in_channels": 1}, 8),
        ("torchvision/mobilenet_v2", {"num_classes": 5, "width_mult": 0.25}, 32),
    ],
)
def test_torch_pruning_plan_rebuilds_pruned_model_exactly(
    name: str, kwargs: dict, size: int
) -> None:
    torch.manual_seed(0)
    spec = ArchSpec(name, kwargs)
    model = spec.build()
    unpruned = copy.deepcopy(model)
    channels = kwargs.get("in_channels", 3)
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    _prune(model, torch.randn(1, channels, size, size), ignored=heads)
    n_before = sum(p.numel() for p in unpruned.parameters())
    assert sum(p.numel() for p in model.parameters()) < 0.6 * n_before

    pruned_spec = ArchSpec.from_json(json.loads(json.dumps(spec.with_plan_of(model).to_json())))
    plan = pruned_spec.channel_plan
    assert plan is not None and plan == channel_plan_of(model, unpruned)
    assert all(isinstance(model.get_submodule(path), nn.Module) for path in plan)
    head_path = next(p for p, m in model.named_modules() if m is heads[0])
    assert plan[head_path]["out_features"] == heads[0].out_features  # classifier keeps its classes
    assert (
        plan[head_path]["in_features"]
        < structural_attrs(unpruned.get_submodule(head_path))["in_features"]
    )

    rebuilt = pruned_spec.build()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert channel_plan_of(rebuilt, model) == {}
    x = torch.randn(3, channels, size, size)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
