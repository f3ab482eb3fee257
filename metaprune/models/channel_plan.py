"""Channel plans: the per-layer shapes of a structurally pruned model, as plain data.

Torch-Pruning shrinks a model in place: it edits module attributes (``out_channels``,
``num_features``, ...) and replaces parameters with smaller ones. A *channel plan*
records everything that differs from a freshly built model of the same architecture,
keyed by module path, e.g.::

    {"layer1.0.conv1": {"in_channels": 16, "out_channels": 8, "groups": 1},
     "layer1.0.bn1": {"num_features": 8},
     "stages.3.blocks.0": {"gamma": [185]},
     "blocks.0.attn": {"num_heads": 3, "head_dim": 40},
     "": {"pos_embed": [1, 17, 120], "cls_token": [1, 1, 120]}}

An entry holds three kinds of values:

* the **structural attributes** of a standard layer (table below), from which the shapes
  of its own weights follow;
* the **shape** (a list of ints) of any other parameter or buffer registered directly on
  the module that was resized: layer scale (ConvNeXt ``gamma``, torchvision
  ``layer_scale``), ResMLP's affine, position embeddings and class tokens (``""`` is the
  root module);
* the **head geometry** of an attention module that is not a standard layer (timm's
  fused-qkv ``Attention`` and its relatives): ``num_heads`` and ``head_dim`` (or
  ``dim_head``), set through :func:`set_heads`, which also keeps ``attn_dim`` and the
  softmax ``scale`` consistent, the same way on the pruned model and on its rebuild.

:func:`apply_channel_plan` replays it on a fresh model, so a pruned checkpoint can be
rebuilt from JSON alone (no pickled modules). Structural attributes per module type:

==========================  ===================================================
``nn.Conv*`` (incl. transposed)  ``in_channels``, ``out_channels``, ``groups``
``nn.Linear``                ``in_features``, ``out_features``
``nn.BatchNorm*``, ``nn.InstanceNorm*``  ``num_features``
``nn.LayerNorm``             ``normalized_shape`` (list of ints)
``nn.GroupNorm``             ``num_channels``, ``num_groups``
``nn.MultiheadAttention``    ``embed_dim``, ``num_heads``, ``head_dim``, ``kdim``, ``vdim``
==========================  ===================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from metaprune.errors import quote

__all__ = [
    "HEAD_ATTRS",
    "MAX_TENSOR_DIMS",
    "STRUCTURAL_ATTRS",
    "ChannelPlan",
    "PlanValue",
    "apply_channel_plan",
    "channel_plan_of",
    "head_attrs",
    "normalize_channel_plan",
    "set_heads",
    "structural_attrs",
    "sync_derived_widths",
]

PlanValue = int | list[int]
ChannelPlan = dict[str, dict[str, PlanValue]]

#: Module types with structural attributes, most specific first (``isinstance`` order).
STRUCTURAL_ATTRS: tuple[tuple[type[nn.Module], tuple[str, ...]], ...] = (
    (_ConvNd, ("in_channels", "out_channels", "groups")),
    (nn.Linear, ("in_features", "out_features")),
    (_NormBase, ("num_features",)),
    (nn.LayerNorm, ("normalized_shape",)),
    (nn.GroupNorm, ("num_channels", "num_groups")),
    (nn.MultiheadAttention, ("embed_dim", "num_heads", "head_dim", "kdim", "vdim")),
)

#: Tensors a structural module's attributes resize (the plan does not list their shapes).
_RESIZED_BY_ATTRS = frozenset(
    {"weight", "bias", "running_mean", "running_var", "in_proj_weight", "in_proj_bias",
     "q_proj_weight", "k_proj_weight", "v_proj_weight", "bias_k", "bias_v"}
)  # fmt: skip

#: Head geometry of attention modules that are not standard layers (see :func:`set_heads`).
HEAD_ATTRS: tuple[str, ...] = ("num_heads", "head_dim", "dim_head")

#: Plain attributes some ``forward`` reads that follow from its layers' widths, by class
#: (``module.qualname``, so nothing is imported), computed from the module: torchvision's
#: ViT reshapes its patch embedding to ``hidden_dim``; timm's ``MixedConv2d`` (MixNet)
#: splits its input by ``splits``, one slice per convolution (Torch-Pruning maps each
#: convolution's channels to its slice of the split; only the list goes stale); timm's
#: ReXNet block adds its input to the first ``in_channels`` of its output. Not in the
#: plan: :func:`sync_derived_widths` recomputes them.
DERIVED_WIDTHS: dict[str, dict[str, Callable[[nn.Module], object]]] = {
    "torchvision.models.vision_transformer.VisionTransformer": {
        "hidden_dim": lambda m: int(m.conv_proj.out_channels),
    },
    "timm.layers.mixed_conv2d.MixedConv2d": {
        "splits": lambda m: [int(c.in_channels) for c in m.values()],
        "in_channels": lambda m: sum(int(c.in_channels) for c in m.values()),
        "out_channels": lambda m: sum(int(c.out_channels) for c in m.values()),
    },
    "timm.models.rexnet.LinearBottleneck": {
        "in_channels": lambda m: int((m.conv_exp or m.conv_dw).conv.in_channels),
        "out_channels": lambda m: int(m.conv_pwl.conv.out_channels),
    },
}

#: The most dimensions a resized tensor in a plan may have.
MAX_TENSOR_DIMS = 8


def _attr_names(module: nn.Module) -> tuple[str, ...] | None:
    for kind, names in STRUCTURAL_ATTRS:
        if isinstance(module, kind):
            return names
    return None


def structural_attrs(module: nn.Module) -> dict[str, PlanValue] | None:
    """The structural attributes of ``module`` as JSON-ready values, or ``None`` if it has none."""
    names = _attr_names(module)
    if names is None:
        return None
    out: dict[str, PlanValue] = {}
    for name in names:
        value = getattr(module, name)
        out[name] = [int(v) for v in value] if isinstance(value, (tuple, list)) else int(value)
    return out


def head_attrs(module: nn.Module) -> dict[str, int] | None:
    """The head geometry (:data:`HEAD_ATTRS` present as ints) of an attention module that
    is not a standard layer, or ``None``."""
    if _attr_names(module) is not None or not isinstance(getattr(module, "num_heads", None), int):
        return None
    out = {n: getattr(module, n) for n in HEAD_ATTRS if hasattr(module, n)}
    if len(out) < 2 or not all(_is_pos_int(v) for v in out.values()):
        return None
    return out


def set_heads(module: nn.Module, num_heads: int, head_dim: int) -> None:
    """Give an attention module ``num_heads`` heads of ``head_dim`` channels.

    Sets ``num_heads``, ``head_dim`` (or ``dim_head``) and, where the module has them,
    ``attn_dim = num_heads * head_dim`` and a softmax ``scale`` that was
    ``old_head_dim ** -0.5`` to ``head_dim ** -0.5``: the value PyTorch's fused
    ``scaled_dot_product_attention`` uses anyway, so the fused and unfused paths agree.
    """
    dim_name = "head_dim" if hasattr(module, "head_dim") else "dim_head"
    old = getattr(module, dim_name)
    module.num_heads = num_heads
    setattr(module, dim_name, head_dim)
    if isinstance(getattr(module, "attn_dim", None), int):
        module.attn_dim = num_heads * head_dim
    scale = getattr(module, "scale", None)
    if isinstance(scale, float) and _is_pos_int(old) and math.isclose(scale, old**-0.5):
        module.scale = head_dim**-0.5


def sync_derived_widths(model: nn.Module) -> None:
    """Set every :data:`DERIVED_WIDTHS` attribute of ``model``'s modules from the layer it
    follows (after pruning, and after a plan is replayed)."""
    for module in model.modules():
        cls = type(module)
        for attr, value in DERIVED_WIDTHS.get(f"{cls.__module__}.{cls.__qualname__}", {}).items():
            setattr(module, attr, value(module))


def channel_plan_of(model: nn.Module, base: nn.Module) -> ChannelPlan:
    """The channel plan turning ``base`` (freshly built) into ``model`` (pruned in place).

    Every structural module of ``model`` whose attributes differ from the module at the
    same path in ``base`` is recorded with *all* its structural attributes; every other
    parameter or buffer whose shape differs, with its shape; every attention module
    whose head geometry differs, with all of it (see the module doc).

    Raises:
        ValueError: if the two models do not have the same structural modules (same paths
            and types), i.e. ``model`` was not derived from ``base`` by channel pruning.
    """
    base_modules = dict(base.named_modules())
    plan: ChannelPlan = {}
    seen: set[str] = set()
    for path, module in model.named_modules():
        attrs = structural_attrs(module)
        if attrs is None:
            continue
        seen.add(path)
        other = base_modules.get(path)
        if other is None or type(other) is not type(module):
            found = "nothing" if other is None else type(other).__name__
            raise ValueError(
                f"module {path!r} ({type(module).__name__}) of the pruned model has no "
                f"counterpart in the base model (found {found}); a channel plan can only "
                "describe channel pruning of the same architecture"
            )
        if attrs != structural_attrs(other):
            plan[path] = attrs
    for path, module in model.named_modules():
        other = base_modules.get(path)
        if other is None:
            continue
        entry = _tensor_shapes(module, other)
        heads = head_attrs(module)
        if heads is not None and heads != head_attrs(other):
            entry.update(heads)
        if entry:
            plan.setdefault(path, {}).update(entry)
    missing = [p for p, m in base_modules.items() if p not in seen and _attr_names(m) is not None]
    if missing:
        raise ValueError(
            f"the pruned model lacks {len(missing)} structural module(s) of the base model, "
            f"e.g. {missing[0]!r}; a channel plan cannot describe removed modules"
        )
    return plan


def _tensor_shapes(module: nn.Module, base: nn.Module) -> dict[str, PlanValue]:
    """Shapes of ``module``'s own tensors that differ from ``base``'s and that its
    structural attributes (if any) do not already determine."""
    structural = _attr_names(module) is not None
    out: dict[str, PlanValue] = {}
    for name, tensor in (*module._parameters.items(), *module._buffers.items()):
        if tensor is None or (structural and name in _RESIZED_BY_ATTRS):
            continue
        old = base._parameters.get(name, base._buffers.get(name))
        if old is None:
            raise ValueError(
                f"tensor {name!r} of module {type(module).__name__} has no counterpart in the "
                "base model; a channel plan cannot describe added tensors"
            )
        if tuple(tensor.shape) != tuple(old.shape):
            out[name] = [int(d) for d in tensor.shape]
    return out


def normalize_channel_plan(plan: Mapping[str, Mapping[str, object]]) -> ChannelPlan:
    """Validate ``plan``'s types and return a canonical plain-JSON copy.

    Raises:
        ValueError: on a non-string path or attribute, or a value that is neither a
            positive int nor a non-empty list of at most :data:`MAX_TENSOR_DIMS` positive
            ints (a ``normalized_shape`` or a tensor shape).
    """
    if not isinstance(plan, Mapping):
        raise ValueError(
            f"channel plan must be a mapping of module path -> attributes (found {type(plan).__name__})"
        )
    out: ChannelPlan = {}
    for path, attrs in plan.items():
        if not isinstance(path, str):
            raise ValueError(f"channel plan: module path must be a string (found {quote(path)})")
        if not isinstance(attrs, Mapping) or not attrs:
            raise ValueError(
                f"channel plan: entry {quote(path)} must be a non-empty mapping of attributes (found {quote(attrs)})"
            )
        entry: dict[str, PlanValue] = {}
        for name, value in attrs.items():
            if not isinstance(name, str):
                raise ValueError(
                    f"channel plan: {quote(path)} has a non-string attribute name {quote(name)}"
                )
            if isinstance(value, (list, tuple)):  # normalized_shape or a tensor's shape
                if not 0 < len(value) <= MAX_TENSOR_DIMS or not all(_is_pos_int(v) for v in value):
                    raise ValueError(
                        f"channel plan: {quote(path)}.{quote(name)} must be a non-empty list of "
                        f"at most {MAX_TENSOR_DIMS} positive ints (found {quote(value)})"
                    )
                entry[name] = [int(v) for v in value]
            elif _is_pos_int(value):
                entry[name] = int(value)  # type: ignore[arg-type]
            else:
                raise ValueError(
                    f"channel plan: {quote(path)}.{quote(name)} must be a positive int (found {quote(value)})"
                )
        out[path] = entry
    return out


def _is_pos_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def apply_channel_plan(model: nn.Module, plan: Mapping[str, Mapping[str, object]]) -> nn.Module:
    """Resize the modules named in ``plan`` in place and return ``model``.

    Attributes are set, and parameters/buffers are replaced by tensors of the new shape
    (same dtype, device and ``requires_grad``) that keep the overlapping slice of the old
    values and are zero elsewhere; load a state dict afterwards for real weights.
    Attributes a plan entry leaves out keep their current values.

    Raises:
        ValueError: on an unknown module path, an attribute that is not structural for that
            module type, or inconsistent values (e.g. channels not divisible by ``groups``).
    """
    plan = normalize_channel_plan(plan)
    for path, entry in plan.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(
                f"channel plan: module {quote(path)} not found in {type(model).__name__}"
            ) from None
        where = f"channel plan: {path!r} ({type(module).__name__})"
        own = {**module._parameters, **module._buffers}
        attrs = {k: v for k, v in entry.items() if own.get(k) is None}
        for name, shape in entry.items():
            if own.get(name) is not None:
                if not isinstance(shape, list):
                    raise ValueError(f"{where}: tensor {name!r} needs a shape (found {shape!r})")
                try:
                    _resize(module, name, tuple(shape))
                except ValueError as err:
                    raise ValueError(f"{where}: {err}") from None
        if not attrs:
            continue
        heads = head_attrs(module)
        if heads is not None:
            _apply_heads(module, attrs, heads, where)
            continue
        current = structural_attrs(module)
        if current is None:
            raise ValueError(
                f"channel plan: module {path!r} ({type(module).__name__}) has no structural "
                f"attributes, head geometry or tensors named {sorted(attrs)}"
            )
        unknown = sorted(set(attrs) - set(current))
        if unknown:
            raise ValueError(
                f"channel plan: {path!r} ({type(module).__name__}) has no structural attribute(s) "
                f"{unknown} (expected a subset of {list(current)})"
            )
        new = {**current, **attrs}
        if isinstance(module, _ConvNd):
            _resize_conv(module, new, where)
        elif isinstance(module, nn.Linear):
            module.in_features, module.out_features = new["in_features"], new["out_features"]
            _resize(module, "weight", (module.out_features, module.in_features))
            _resize(module, "bias", (module.out_features,))
        elif isinstance(module, _NormBase):
            module.num_features = c = new["num_features"]
            for name in ("weight", "bias", "running_mean", "running_var"):
                _resize(module, name, (c,))
        elif isinstance(module, nn.LayerNorm):
            module.normalized_shape = shape = tuple(new["normalized_shape"])  # type: ignore[arg-type]
            _resize(module, "weight", shape)
            _resize(module, "bias", shape)
        elif isinstance(module, nn.GroupNorm):
            c, g = new["num_channels"], new["num_groups"]
            if c % g:  # type: ignore[operator]
                raise ValueError(f"{where}: num_channels={c} is not divisible by num_groups={g}")
            module.num_channels, module.num_groups = c, g
            _resize(module, "weight", (c,))
            _resize(module, "bias", (c,))
        elif isinstance(module, nn.MultiheadAttention):
            _resize_mha(module, new, where)
    sync_derived_widths(model)
    return model


def _apply_heads(
    module: nn.Module, attrs: dict[str, PlanValue], current: dict[str, int], where: str
) -> None:
    unknown = sorted(set(attrs) - set(current))
    if unknown or not all(isinstance(v, int) for v in attrs.values()):
        raise ValueError(
            f"{where}: expected int head attribute(s) among {sorted(current)} (found {quote(attrs)})"
        )
    new = {**current, **attrs}
    dim = new.get("head_dim", new.get("dim_head"))
    assert isinstance(dim, int)
    set_heads(module, new["num_heads"], dim)


def _resize(module: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    """Replace parameter/buffer ``name`` by a tensor of ``shape`` keeping the overlap."""
    old = getattr(module, name, None)
    if old is None:
        return
    if old.dim() != len(shape):
        raise ValueError(f"cannot resize {name} of shape {tuple(old.shape)} to {shape}")
    new = torch.zeros(shape, dtype=old.dtype, device=old.device)
    overlap = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, shape))
    with torch.no_grad():
        new[overlap] = old.detach()[overlap]
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, name, new)


def _resize_conv(module: _ConvNd, new: dict[str, PlanValue], where: str) -> None:
    cin, cout, groups = new["in_channels"], new["out_channels"], new["groups"]
    assert isinstance(cin, int) and isinstance(cout, int) and isinstance(groups, int)
    if cin % groups or cout % groups:
        raise ValueError(
            f"{where}: in_channels={cin} and out_channels={cout} must be divisible by groups={groups}"
        )
    module.in_channels, module.out_channels, module.groups = cin, cout, groups
    kernel = tuple(module.kernel_size)
    if module.transposed:
        _resize(module, "weight", (cin, cout // groups, *kernel))
    else:
        _resize(module, "weight", (cout, cin // groups, *kernel))
    _resize(module, "bias", (cout,))


def _resize_mha(module: nn.MultiheadAttention, new: dict[str, PlanValue], where: str) -> None:
    e, h, kdim, vdim = new["embed_dim"], new["num_heads"], new["kdim"], new["vdim"]
    assert (
        isinstance(e, int)
        and isinstance(h, int)
        and isinstance(kdim, int)
        and isinstance(vdim, int)
    )
    if e % h:
        raise ValueError(f"{where}: embed_dim={e} is not divisible by num_heads={h}")
    module.embed_dim, module.num_heads, module.kdim, module.vdim = e, h, kdim, vdim
    module.head_dim = new["head_dim"]  # type: ignore[assignment]
    same = kdim == e and vdim == e
    ref: Tensor = module.out_proj.weight
    if same != module._qkv_same_embed_dim:  # switch between packed and separate q/k/v
        if same:
            module.register_parameter(
                "in_proj_weight",
                nn.Parameter(torch.zeros(3 * e, e, dtype=ref.dtype, device=ref.device)),
            )
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                module.register_parameter(name, None)
        else:
            for name, d in (("q_proj_weight", e), ("k_proj_weight", kdim), ("v_proj_weight", vdim)):
                module.register_parameter(
                    name, nn.Parameter(torch.zeros(e, d, dtype=ref.dtype, device=ref.device))
                )
            module.register_parameter("in_proj_weight", None)
        module._qkv_same_embed_dim = same
    if same:
        _resize(module, "in_proj_weight", (3 * e, e))
    else:
        _resize(module, "q_proj_weight", (e, e))
        _resize(module, "k_proj_weight", (e, kdim))
        _resize(module, "v_proj_weight", (e, vdim))
    _resize(module, "in_proj_bias", (3 * e,))
    _resize(module, "bias_k", (1, 1, e))
    _resize(module, "bias_v", (1, 1, e))
