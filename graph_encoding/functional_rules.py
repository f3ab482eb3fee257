"""Functional layers: ``F.batch_norm`` / ``group_norm`` / ``layer_norm`` / ``conv*d`` /
``linear`` called with the model's own tensors (timm's norm-activation layers,
weight-standardised convolutions).

A functional call is the layer it computes as soon as every tensor it reads resolves to a
state-dict entry: the fx ``get_attr`` node of a parameter or buffer. A convolution whose
weight is *derived* from one parameter of the weight's shape (weight standardisation,
``w * gain``) stores that raw parameter on its edges: the transform is architecture, the
parameter is what the graph holds, so the round trip stays exact. Anything computed from
the input (dynamic / conditional convolutions) is refused.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torchvision.models import swin_transformer as tv_swin

from .channels import Chan, EncodingError, describe, rank_of
from .schema import NormKind

__all__ = ["FunctionalRules", "FUNCTIONAL_LAYERS", "OPAQUE_FUNCTIONS"]

# target -> positional index of each argument the rule reads (name -> index)
_BATCH_NORM = {"input": 0, "running_mean": 1, "running_var": 2, "weight": 3, "bias": 4}
_ATEN_BATCH_NORM = {"input": 0, "weight": 1, "bias": 2, "running_mean": 3, "running_var": 4}
_GROUP_NORM = {"input": 0, "num_groups": 1, "weight": 2, "bias": 3}
_LAYER_NORM = {"input": 0, "normalized_shape": 1, "weight": 2, "bias": 3}
_CONV = {"input": 0, "weight": 1, "bias": 2, "stride": 3, "padding": 4, "dilation": 5, "groups": 6}
_LINEAR = {"input": 0, "weight": 1, "bias": 2}

FUNCTIONAL_LAYERS = {
    F.batch_norm: ("batch_norm", _BATCH_NORM),
    torch.batch_norm: ("batch_norm", _ATEN_BATCH_NORM),
    F.group_norm: ("group_norm", _GROUP_NORM),
    torch.group_norm: ("group_norm", _GROUP_NORM),
    F.layer_norm: ("layer_norm", _LAYER_NORM),
    torch.layer_norm: ("layer_norm", _LAYER_NORM),
    F.conv1d: ("conv", _CONV),
    F.conv2d: ("conv", _CONV),
    torch.conv1d: ("conv", _CONV),
    torch.conv2d: ("conv", _CONV),
    F.linear: ("linear", _LINEAR),
}
_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}

# functions torchvision hides from fx (``torch.fx.wrap``), read by their signature
_WINDOW_ATTENTION = {
    "input": 0,
    "qkv_weight": 1,
    "proj_weight": 2,
    "num_heads": 5,
    "qkv_bias": 9,
    "proj_bias": 10,
}
OPAQUE_FUNCTIONS = {
    tv_swin.shifted_window_attention: "window_attention",
    tv_swin._patch_merging_pad: "patch_merging",
}


def _arg(node: torch.fx.Node, spec: dict[str, int], name: str) -> object:
    i = spec[name]
    if i < len(node.args):
        return node.args[i]
    return node.kwargs.get(name, _DEFAULTS.get(name))


def _first(value: object) -> object:
    return value[0] if isinstance(value, (list, tuple)) else value


class FunctionalRules:
    """Mixin of :class:`~graph_encoding.trace.Tracer`: functional norms, convs, linears."""

    def functional_layer(self, node: torch.fx.Node, args: tuple, chans: list) -> Chan:
        rule, spec = FUNCTIONAL_LAYERS[node.target]
        where = describe(node)
        x = args[0] if args else None
        if not isinstance(x, Chan):
            raise EncodingError(f"{where}: {rule} must read channels as its input tensor")
        if len(chans) != 1:
            raise EncodingError(
                f"{where}: its weights depend on the input (a dynamic or conditional layer); "
                "the graph cannot hold them"
            )
        if rule == "conv":
            return self._functional_conv(node, spec, x, where)
        if rule == "linear":
            weight, shape = self.derived_param(_arg(node, spec, "weight"), where, "weight")
            bias = self.param_key(_arg(node, spec, "bias"), where, "bias")
            path = weight.rsplit(".", 1)[0]
            return self.linear_layer(node, path, x, shape[1], shape[0], weight, bias)
        keys = {
            slot: self.param_key(_arg(node, spec, name), where, name)
            for slot, name in (
                ("weight", "weight"),
                ("norm_bias", "bias"),
                ("running_mean", "running_mean"),
                ("running_var", "running_var"),
            )
            if name in spec
        }
        keys = {slot: key for slot, key in keys.items() if key is not None}
        path = _common_path(keys.values()) or node.name
        if rule == "layer_norm":
            shape = _arg(node, spec, "normalized_shape")
            shape = (shape,) if isinstance(shape, int) else tuple(shape)
            self._check_layer_norm(node, path, shape, x)
            return self.attach_norm(node, path, NormKind.LAYER, keys, x)
        if x.dim != 1:
            raise EncodingError(f"{where}: expected channels on axis 1, found axis {x.dim}")
        kind = NormKind.BATCH if rule == "batch_norm" else NormKind.GROUP
        return self.attach_norm(node, path, kind, keys, x)

    def opaque_function(self, node: torch.fx.Node, args: tuple, chans: list) -> Chan:
        """torchvision's Swin: ``shifted_window_attention`` is an attention layer with a
        fused ``qkv`` weight (channels last); ``_patch_merging_pad`` concatenates four
        strided spatial slices on the channel axis (each channel four times)."""
        where = describe(node)
        x = args[0] if args else None
        rank = rank_of(node.args[0])
        if not isinstance(x, Chan) or len(chans) != 1 or x.dim != rank - 1 or x.inner != 1:
            raise EncodingError(f"{where}: expected channels on the last axis of its input only")
        if OPAQUE_FUNCTIONS[node.target] == "patch_merging":
            return Chan(x.dim, x.segs * 4)
        spec = _WINDOW_ATTENTION
        qkv = self.param_key(_arg(node, spec, "qkv_weight"), where, "qkv weight")
        proj = self.param_key(_arg(node, spec, "proj_weight"), where, "proj weight")
        qkv_bias = self.param_key(_arg(node, spec, "qkv_bias"), where, "qkv bias")
        proj_bias = self.param_key(_arg(node, spec, "proj_bias"), where, "proj bias")
        e, out = self.state_shapes[qkv][0] // 3, self.state_shapes[proj][0]
        if self.state_shapes[qkv][1] != x.size or self.state_shapes[proj][1] != e:
            raise EncodingError(f"{where}: qkv / proj weights do not fit {x.size} channels")
        in_set, in_start = self.contiguous(x, where)
        x = Chan(x.dim, ((in_set, in_start, in_start + x.size),))
        cid = self.attention_blocks(
            qkv.rsplit(".", 1)[0],
            [x, x, x],
            e,
            qkv,
            qkv_bias,
            proj.rsplit(".", 1)[0],
            out,
            proj,
            proj_bias,
            int(_arg(node, spec, "num_heads")),
        )
        return Chan(x.dim, ((self.set_of(cid), 0, out),), fresh=cid)

    def _functional_conv(self, node: torch.fx.Node, spec: dict, x: Chan, where: str) -> Chan:
        arg = _arg(node, spec, "weight")
        if not self._reads_state(arg) and _arg(node, spec, "bias") is None:
            # a filter fixed by the architecture (timm's BlurPool2d: a non-persistent
            # buffer): per channel it is a pool; mixing channels with it is not
            shape = tuple(arg.meta["tensor_meta"].shape) if isinstance(arg, torch.fx.Node) else ()
            groups = int(_arg(node, spec, "groups"))
            if shape and groups == x.size == shape[0] and x.dim == 1 and x.inner == 1:
                return Chan(1, x.segs)
            raise EncodingError(
                f"{where}: a convolution with a fixed filter that mixes channels is not supported"
            )
        weight, shape = self.derived_param(arg, where, "weight")
        bias = self.param_key(_arg(node, spec, "bias"), where, "bias")
        padding = _arg(node, spec, "padding")
        return self.conv_layer(
            node,
            weight.rsplit(".", 1)[0],
            x,
            weight,
            shape,
            bias,
            groups=int(_arg(node, spec, "groups")),
            stride=int(_first(_arg(node, spec, "stride"))),
            dilation=int(_first(_arg(node, spec, "dilation"))),
            padding=-1 if isinstance(padding, str) else int(_first(padding)),
        )

    # ------------------------------------------------------------ parameter resolution
    def _reads_state(self, arg: object) -> bool:
        """Whether ``arg`` is computed from a state tensor or from the input."""
        todo, seen = [arg], set()
        while todo:
            n = todo.pop()
            if not isinstance(n, torch.fx.Node) or n in seen:
                continue
            seen.add(n)
            if n.op == "placeholder" or (n.op == "get_attr" and str(n.target) in self.state_keys):
                return True
            todo.extend(n.all_input_nodes)
        return False

    def param_key(self, arg: object, where: str, what: str) -> str | None:
        """The state key a functional op reads as ``what`` (None when it reads nothing)."""
        if arg is None:
            return None
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            key = str(arg.target)
            if key in self.state_keys:
                return key
        raise EncodingError(
            f"{where}: its {what} is computed, not a parameter or buffer of the model; "
            "the graph cannot hold it exactly"
        )

    def derived_param(self, arg: object, where: str, what: str) -> tuple[str, tuple[int, ...]]:
        """The one parameter a layer weight is computed from, with the weight's shape.

        ``arg`` is a ``get_attr`` itself or computed from parameters only (never from the
        input); exactly one of those parameters must have the weight's own shape.
        """
        if not isinstance(arg, torch.fx.Node):
            raise EncodingError(f"{where}: its {what} is not a tensor of the model")
        meta = arg.meta.get("tensor_meta")
        shape = tuple(int(s) for s in meta.shape) if meta is not None else ()
        if arg.op == "get_attr":
            return self.param_key(arg, where, what), shape  # type: ignore[return-value]
        sources, seen, todo = [], set(), [arg]
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "placeholder":
                raise EncodingError(
                    f"{where}: its {what} depends on the input (a dynamic or conditional "
                    "layer); the graph cannot hold it"
                )
            if n.op == "get_attr":
                sources.append(str(n.target))
            todo.extend(n.all_input_nodes)
        matching = [k for k in sources if k in self.state_keys and self.state_shapes[k] == shape]
        if len(matching) != 1:
            raise EncodingError(
                f"{where}: its {what} of shape {shape} is computed from {sorted(set(sources))}; "
                "expected exactly one parameter of that shape"
            )
        return matching[0], shape


def _common_path(keys: object) -> str:
    paths = {k.rsplit(".", 1)[0] for k in keys}  # type: ignore[union-attr]
    return paths.pop() if len(paths) == 1 else ""
