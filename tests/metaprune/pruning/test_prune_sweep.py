"""The prune sweep (metaprune.testing.prune_sweep): timm and torchvision models pruned with
``metaprune.prune``, saved and reloaded. Fast: ConvNeXt layer scale and ViT heads at 32 px,
reloaded in-process (torchvision's ViT and timm's LeViT: slow). Slow: one real model per
mechanism at 32 px, reloaded in a fresh process; ``python -m metaprune.testing.prune_sweep``
runs one model per family."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import metaprune
from metaprune.models import ArchSpec, register_model
from metaprune.models import registry as registry_module
from metaprune.pruning import Target
from metaprune.testing import prune_sweep

pytest.importorskip("timm")


def _tiny_convnext(*, num_classes: int = 4) -> torch.nn.Module:
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(in_chans=1, num_classes=num_classes, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
                    patch_size=1, kernel_sizes=3, ls_init_value=0.5)  # fmt: skip


def _tiny_vit(*, num_classes: int = 4) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=num_classes,
                             embed_dim=32, depth=2, num_heads=4)  # fmt: skip


def _tiny_levit(*, num_classes: int = 4) -> torch.nn.Module:
    from timm.models.levit import Levit

    return Levit(img_size=32, num_classes=num_classes, embed_dim=(16, 24), key_dim=4,
                 depth=(1, 1), num_heads=(2, 2))  # fmt: skip


def _tiny_tv_vit(*, num_classes: int = 4) -> torch.nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(16, 4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                             num_classes=num_classes)  # fmt: skip


def _tiny_tv_convnext(*, num_classes: int = 4) -> torch.nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], layer_scale=0.5,
                    num_classes=num_classes)  # fmt: skip


@pytest.fixture
def tiny_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny timm and torchvision models registered for this test only (the registry is a
    copy)."""
    registry = dict(registry_module._REGISTRY)
    monkeypatch.setattr(registry_module, "_REGISTRY", registry)
    register_model("test/tiny_convnext")(_tiny_convnext)
    register_model("test/tiny_vit")(_tiny_vit)
    register_model("test/tiny_levit")(_tiny_levit)
    register_model("test/tiny_tv_vit")(_tiny_tv_vit)
    register_model("test/tiny_tv_convnext")(_tiny_tv_convnext)


@pytest.fixture(scope="module")
def rgb_splits() -> metaprune.DatasetSplits:
    """4 classes of 3x16x16 images (LeViT: 32 px)."""
    return metaprune.get_dataset("synthetic", seed=0, num_classes=4, image_size=16,
                                 n_train=64, n_val=32, n_test=32)  # fmt: skip


@pytest.mark.parametrize("name", [
    "test/tiny_tv_convnext",
    pytest.param("test/tiny_tv_vit", marks=pytest.mark.slow),  # ~12 s idle
    pytest.param("test/tiny_levit", marks=pytest.mark.slow),  # ~25 s idle: 7 dry-run graphs
])  # fmt: skip
def test_torchvision_vit_convnext_and_levit_prune_save_and_reload(
    tiny_timm, rgb_splits, tmp_path, name
) -> None:
    """torchvision ViT reshapes to ``hidden_dim`` (kept equal to its patch embedding's
    width), ConvNeXt scales by ``layer_scale`` (C, 1, 1), LeViT caches attention biases
    between eval passes (forgotten before every copy)."""
    side = 32 if name == "test/tiny_levit" else 16
    splits = rgb_splits
    if side != 16:
        splits = metaprune.get_dataset("synthetic", seed=0, num_classes=4, image_size=side,
                                       n_train=64, n_val=32, n_test=32)  # fmt: skip
    spec = ArchSpec(name)
    torch.manual_seed(0)
    config = prune_sweep._config()
    if name == "test/tiny_levit":  # its residual stream is frozen (a reshape to its width):
        config = dataclasses.replace(config, target=Target("macs", 1.2))  # 2x is refused
    result = metaprune.prune(spec.build(), splits, config, spec=spec)
    if name == "test/tiny_levit":
        assert result.report["target_reached"] and result.report["structure"]["frozen"]
        assert result.report["speedup"]["macs"] >= 1.2
    else:
        assert result.report["target_reached"] and result.report["speedup"]["macs"] >= 2.0
    result.save(tmp_path)
    model, loaded = metaprune.load(tmp_path / "model.safetensors")
    if name == "test/tiny_tv_vit":  # the residual stream itself was pruned, step by step
        assert result.report["structure"]["frozen"] == []
        assert result.report["speedup"]["macs"] <= 2.6  # not all at once (it was 7.3x)
        assert model.hidden_dim == model.conv_proj.out_channels == result.model.hidden_dim < 16
        assert model.encoder.pos_embedding.shape[-1] == model.hidden_dim
    elif name == "test/tiny_tv_convnext":
        scales = [m.layer_scale for m in model.modules() if hasattr(m, "layer_scale")]
        assert len(scales) == 2 and any(s.shape[0] < 16 for s in scales)
        assert all(s.shape[1:] == (1, 1) for s in scales)
    x = torch.randn(3, 3, side, side)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), result.model.eval()(x))


@pytest.mark.parametrize("name", ["test/tiny_convnext", "test/tiny_vit"])
def test_layer_scale_and_heads_prune_save_and_reload(tiny_timm, splits, tmp_path, name) -> None:
    spec = ArchSpec(name)
    torch.manual_seed(0)
    config = dataclasses.replace(prune_sweep._config(), target=Target("macs", 2.5))
    result = metaprune.prune(spec.build(), splits, config, spec=spec)
    assert result.report["target_reached"] and result.report["structure"]["frozen"] == []
    result.save(tmp_path)
    model, loaded = metaprune.load(tmp_path / "model.safetensors")
    plan = loaded.channel_plan
    assert plan is not None and loaded == result.spec
    if name == "test/tiny_convnext":  # layer scale: bare parameters, recorded by shape
        gammas = {k: v["gamma"] for k, v in plan.items() if "gamma" in v}
        assert gammas and any(shape[0] < 32 for shape in gammas.values())
        for path, shape in gammas.items():
            assert tuple(model.get_submodule(path).gamma.shape) == tuple(shape)
    else:  # every block keeps its 4 heads, narrower, as the plan says
        attention = [m for m in model.modules() if type(m).__name__ == "Attention"]
        assert len(attention) == 2 and any("head_dim" in v for v in plan.values())
        for m in attention:
            assert m.num_heads == 4 and m.qkv.out_features == 12 * m.head_dim
            assert m.attn_dim == 4 * m.head_dim == m.proj.in_features
        assert any(m.head_dim < 8 for m in attention)
        assert "pos_embed" in plan[""] and "cls_token" in plan[""]
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), result.model.eval()(x))


# one real model per mechanism the pruner must handle, at 32 px (the script runs every
# family; torchvision's ConvNeXt and ViT and timm's LeViT and ConvNeXt have tiny tests above)
SLOW = [
    ("timm/mobilenetv3_small_050", {}, 32),  # depthwise convs, hard-sigmoid SE gates
    ("timm/regnetx_002", {}, 32),  # grouped convs, residual adds
    ("timm/ese_vovnet19b_slim", {}, 32),  # concatenations, eSE gates
    ("timm/vit_tiny_patch16_224", {"img_size": 32}, 32),  # fused qkv heads, pos embedding
    ("timm/resmlp_12_224", {"img_size": 32}, 32),  # ResMLP affine; sliced groups left unscored
    ("torchvision/squeezenet1_1", {}, 32),  # a conv classifier, pooled afterwards
]  # (the channel shuffle: test_structure.py, a tiny torchvision ShuffleNet-V2)


@pytest.mark.slow
def test_one_model_per_mechanism_reloads_in_a_fresh_process() -> None:
    outcomes = prune_sweep.run(SLOW, steps=4)  # the script's 12 steps cost 3x the passes
    table = {o.model: (o.result, o.speedup, o.max_diff, o.reason) for o in outcomes}
    for outcome in outcomes:
        assert outcome.result in ("exact", "close"), table
        assert outcome.speedup >= 2.0 and outcome.max_diff is not None
        assert outcome.max_diff < 1e-4
    assert sum(o.result == "exact" for o in outcomes) >= len(outcomes) - 1, table
