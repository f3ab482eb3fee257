"""Channel plans: the per-layer shapes of a structurally pruned model, as plain data.

Torch-Pruning shrinks a model in place: it edits module attributes (``out_channels``,
``num_features``, ...) and replaces parameters with smaller ones. A *channel plan*
records those attributes for every module that differs from a freshly built model of
the same architecture, keyed by module path, e.g.::

    {"layer1.0.conv1": {"in_channels": 16, "out_channels": 8, "groups": 1},
     "layer1.0.bn1": {"num_features": 8}}

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

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from metaprune.errors import quote

__all__ = [
    "STRUCTURAL_ATTRS",
    "ChannelPlan",
    "PlanValue",
    "apply_channel_plan",
    "channel_plan_of",
    "normalize_channel_plan",
    "structural_attrs",
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


def channel_plan_of(model: nn.Module, base: nn.Module) -> ChannelPlan:
    """The channel plan turning ``base`` (freshly built) into ``model`` (pruned in place).

    Every structural module of ``model`` whose attributes differ from the module at the
    same path in ``base`` is recorded with *all* its structural attributes.

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
    missing = [p for p, m in base_modules.items() if p not in seen and _attr_names(m) is not None]
    if missing:
        raise ValueError(
            f"the pruned model lacks {len(missing)} structural module(s) of the base model, "
            f"e.g. {missing[0]!r}; a channel plan cannot describe removed modules"
        )
    return plan


def normalize_channel_plan(plan: Mapping[str, Mapping[str, object]]) -> ChannelPlan:
    """Validate ``plan``'s types and return a canonical plain-JSON copy.

    Raises:
        ValueError: on a non-string path or attribute, or a value that is not a positive
            int (or, for ``normalized_shape``, a non-empty list of positive ints).
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
            if name == "normalized_shape":
                if (
                    not isinstance(value, (list, tuple))
                    or not value
                    or not all(_is_pos_int(v) for v in value)
                ):
                    raise ValueError(
                        f"channel plan: {quote(path)}.normalized_shape must be a non-empty list of positive ints (found {quote(value)})"
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
    for path, attrs in plan.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(
                f"channel plan: module {quote(path)} not found in {type(model).__name__}"
            ) from None
        current = structural_attrs(module)
        if current is None:
            raise ValueError(
                f"channel plan: module {path!r} ({type(module).__name__}) has no structural attributes"
            )
        unknown = sorted(set(attrs) - set(current))
        if unknown:
            raise ValueError(
                f"channel plan: {path!r} ({type(module).__name__}) has no structural attribute(s) "
                f"{unknown} (expected a subset of {list(current)})"
            )
        new = {**current, **attrs}
        where = f"channel plan: {path!r} ({type(module).__name__})"
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
    return model


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
