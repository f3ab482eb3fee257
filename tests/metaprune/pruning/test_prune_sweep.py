"""The prune sweep (metaprune.testing.prune_sweep): timm and torchvision models pruned with
``metaprune.prune``, saved and reloaded. Fast: ConvNeXt layer scale and ViT heads at 32 px,
reloaded in-process. Slow: one model per family, reloaded in a fresh process."""

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


@pytest.fixture
def tiny_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny timm ConvNeXt and ViT registered for this test only (the registry is a copy)."""
    registry = dict(registry_module._REGISTRY)
    monkeypatch.setattr(registry_module, "_REGISTRY", registry)
    register_model("test/tiny_convnext")(_tiny_convnext)
    register_model("test/tiny_vit")(_tiny_vit)


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


# one model per mechanism the pruner must handle; the script runs every family
SLOW = [
    ("timm/resnet18", {}, 32),  # residual adds
    ("timm/efficientnet_b0", {}, 32),  # depthwise convs, SE gates
    ("timm/mobilenetv3_small_100", {}, 32),  # hard-sigmoid SE
    ("timm/convnext_atto", {}, 32),  # layer scale
    ("timm/vit_tiny_patch16_224", {"img_size": 32}, 32),  # fused qkv heads, pos embedding
    ("timm/resmlp_12_224", {"img_size": 32}, 32),  # ResMLP affine
    ("timm/dla34", {}, 32),  # concatenations
    ("torchvision/convnext_tiny", {}, 32),  # layer_scale
    ("torchvision/vit_b_32", {"image_size": 32}, 32),  # nn.MultiheadAttention
    ("torchvision/squeezenet1_1", {}, 32),  # a conv classifier, pooled afterwards
    ("timm/regnetx_002", {}, 32),  # grouped convs
    ("torchvision/shufflenet_v2_x0_5", {}, 32),  # channel shuffle: refused before any work
]
REFUSED = {"torchvision/shufflenet_v2_x0_5": "reshapes the channel axis (a channel shuffle"}
# torchvision's ViT reshapes its patches to the constructor's hidden_dim: the residual
# stream is frozen (found by the dry run), the rest pruned, and 2x is just out of reach
SHORT = {"torchvision/vit_b_32": "frozen: encoder.layers.encoder_layer_11.mlp.3"}


@pytest.mark.slow
def test_one_model_per_mechanism_reloads_in_a_fresh_process() -> None:
    outcomes = prune_sweep.run(SLOW)
    table = {o.model: (o.result, o.speedup, o.max_diff, o.reason) for o in outcomes}
    for outcome in outcomes:
        if outcome.model in REFUSED:
            assert outcome.result == "refused" and REFUSED[outcome.model] in outcome.reason
            assert outcome.seconds < 60
            continue
        if outcome.model in SHORT:
            assert outcome.result == "short" and outcome.reason.startswith(SHORT[outcome.model])
            assert 1.8 < outcome.speedup < 2.0 and outcome.max_diff == 0.0
            continue
        assert outcome.result in ("exact", "close"), table
        assert outcome.speedup >= 2.0 and outcome.max_diff is not None
        assert outcome.max_diff < 1e-4
    assert sum(o.result == "exact" for o in outcomes) >= len(outcomes) - len(REFUSED) - len(SHORT) - 2, table
