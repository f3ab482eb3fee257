"""How the tracer reads layers: conv, linear, norms and attention write node sets."""

from __future__ import annotations

import math

import torch
import torch.fx
from torch import nn

from .channels import (
    Chan,
    Contributor,
    EncodingError,
    TupleOf,
    need,
    rank_of,
    sole_user,
)
from .schema import EdgeKind, NodeKind, NormKind
from .vocab import ELEMENTWISE_MODULES, NORMS, POOL_MODULES

__all__ = ["LayerRules", "NORM_ATTRS"]

# node-feature slot -> attribute of a norm module
NORM_ATTRS = {
    "weight": "weight",
    "norm_bias": "bias",
    "running_mean": "running_mean",
    "running_var": "running_var",
}


def _is_tensor(arg: object) -> bool:
    return isinstance(arg, torch.fx.Node) and arg.meta.get("tensor_meta") is not None


class LayerRules:
    """Mixin of :class:`~graph_encoding.trace.Tracer`: one method per supported layer."""

    def call_module(self, node: torch.fx.Node, mod: nn.Module, args: tuple, kwargs: dict) -> object:
        path = str(node.target)
        x = args[0] if args else None
        if (
            x is None
            and isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear))
            and _is_tensor(node.args[0] if node.args else None)
        ):
            # a layer over values that carry no channels (CaiT's talking heads mix the
            # attention scores of the heads, Swin-V2's position-bias MLP, EdgeNeXt's Fourier
            # position encoding): no channel node reads it, its weight travels beside the graph
            return None
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            return self.conv(node, path, mod, need(x, path, mod))
        if isinstance(mod, nn.Linear):
            return self.linear(node, path, mod, need(x, path, mod))
        if isinstance(mod, NORMS):
            return self.norm(node, path, mod, need(x, path, mod))
        if isinstance(mod, nn.MultiheadAttention):
            return self.attention(node, path, mod, args, kwargs)
        if isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
            raise EncodingError(f"{path}: per-channel PReLU is not supported")
        if isinstance(mod, ELEMENTWISE_MODULES):
            return self.passthrough(node, x) if isinstance(x, Chan) else None
        if isinstance(mod, POOL_MODULES):
            return self.reduce(node, x) if isinstance(x, Chan) else None
        if isinstance(mod, (nn.Flatten, nn.Unflatten)):
            return self.reshape(node, x, path) if isinstance(x, Chan) else None
        raise EncodingError(
            f"{path}: module {type(mod).__name__} is not supported by the graph encoder"
        )

    def conv(self, node: torch.fx.Node, path: str, mod: nn.Conv2d, x: Chan) -> Chan:
        padding = mod.padding[0] if isinstance(mod.padding, tuple) else -1  # -1: "same"/"valid"
        return self.conv_layer(
            node,
            path,
            x,
            f"{path}.weight",
            tuple(mod.weight.shape),
            f"{path}.bias" if mod.bias is not None else None,
            groups=mod.groups,
            stride=mod.stride[0],
            dilation=mod.dilation[0],
            padding=padding,
        )

    def conv_layer(
        self,
        node: torch.fx.Node,
        path: str,
        x: Chan,
        weight: str,
        shape: tuple[int, ...],
        bias: str | None,
        *,
        groups: int,
        stride: int,
        dilation: int,
        padding: int,
    ) -> Chan:
        """A convolution (module or functional) whose weight is the state tensor ``weight``
        of shape ``(out, in // groups, *kernel)``."""
        out_channels, in_channels = shape[0], shape[1] * groups
        if x.dim >= 2:
            raise EncodingError(
                f"{path}: a convolution across the channel axis (axis {x.dim}, e.g. ECA "
                "attention) depends on the order of the channels; the graph cannot represent it"
            )
        if x.dim != 1 or x.inner != 1 or x.size != in_channels:
            raise EncodingError(
                f"{path}: expected {in_channels} input channels on axis 1, found "
                f"{x.size * x.inner} on axis {x.dim}"
            )
        if groups == 1:
            kind = EdgeKind.CONV
        elif groups == in_channels == out_channels:
            kind = EdgeKind.DEPTHWISE_CONV
        else:
            kind = EdgeKind.GROUPED_CONV
        kernel = tuple(shape[2:])
        cid = self.add_layer(
            path,
            kind,
            x,
            out_channels,
            weight,
            bias=bias,
            groups=groups,
            width=math.prod(kernel),
            kernel=kernel,
            stride=stride,
            dilation=dilation,
            padding=padding,
        )
        return Chan(1, ((self.set_of(cid), 0, out_channels),), fresh=cid)

    def linear(self, node: torch.fx.Node, path: str, mod: nn.Linear, x: Chan) -> Chan:
        rank = rank_of(node.args[0])
        if x.dim != rank - 1 and any(self.sets[s].kind != NodeKind.INPUT for s, _, _ in x.segs):
            # a linear over another axis (MLP-Mixer's token mixing) is the same map for
            # every channel: the channels pass through, its weight travels beside the graph
            return Chan(x.dim, x.segs, x.inner)
        bias = f"{path}.bias" if mod.bias is not None else None
        return self.linear_layer(
            node, path, x, mod.in_features, mod.out_features, f"{path}.weight", bias
        )

    def linear_layer(
        self,
        node: torch.fx.Node,
        path: str,
        x: Chan,
        in_features: int,
        out_features: int,
        weight: str,
        bias: str | None,
    ) -> Chan:
        """A linear map (module or functional) over the last axis."""
        rank = rank_of(node.args[0])
        if x.dim != rank - 1 or x.size * x.inner != in_features:
            raise EncodingError(
                f"{path}: expected {in_features} features on the last axis, found "
                f"{x.size}x{x.inner} on axis {x.dim} of a rank-{rank} tensor"
            )
        cid = self.add_layer(
            path,
            EdgeKind.LINEAR,
            x,
            out_features,
            weight,
            bias=bias,
            width=x.inner,
            kernel=(x.inner,) if x.inner > 1 else (),
        )
        return Chan(rank_of(node) - 1, ((self.set_of(cid), 0, out_features),), fresh=cid)

    def norm(self, node: torch.fx.Node, path: str, mod: nn.Module, x: Chan) -> Chan:
        if isinstance(mod, nn.LayerNorm):
            self._check_layer_norm(node, path, tuple(mod.normalized_shape), x)
            kind = NormKind.LAYER
        else:
            kind = NormKind.GROUP if isinstance(mod, nn.GroupNorm) else NormKind.BATCH
            if x.dim != 1:
                raise EncodingError(f"{path}: expected channels on axis 1, found axis {x.dim}")
        keys = {
            slot: f"{path}.{attr}"
            for slot, attr in NORM_ATTRS.items()
            if getattr(mod, attr, None) is not None
        }
        return self.attach_norm(node, path, kind, keys, x)

    def _check_layer_norm(self, node: torch.fx.Node, path: str, shape: tuple, x: Chan) -> None:
        if len(shape) != 1 or x.dim != rank_of(node.args[0]) - 1:
            raise EncodingError(
                f"{path}: LayerNorm must normalise exactly the channel axis (last); found "
                f"normalized_shape={shape}, channel axis {x.dim}"
            )

    def attach_norm(
        self, node: torch.fx.Node, path: str, kind: NormKind, keys: dict[str, str], x: Chan
    ) -> Chan:
        """Norm values go into the node features of the layer whose output they normalise;
        a norm over channels that are not one layer's own output gets a node set.
        ``keys``: the state keys the norm reads, by node-feature slot."""
        if x.inner != 1:
            raise EncodingError(f"{path}: normalisation of flattened channels is not supported")
        norm = (kind, dict(keys))
        owner = x.fresh if sole_user(node.args[0]) else None
        if owner is not None and self.contributors[owner].norm is None:
            self.contributors[owner].norm = norm
            return Chan(x.dim, x.segs, fresh=owner)
        self.depth += 1
        s = self.new_set(path, x.size, NodeKind.NORM)
        self.identity_into(x, s, path)
        self.contributors.append(Contributor(path, len(self.blocks) - 1, None, 0, norm))
        self.sets[s].contributors.append(len(self.contributors) - 1)
        return Chan(x.dim, ((s, 0, x.size),), fresh=None)

    def attention(
        self, node: torch.fx.Node, path: str, mod: nn.MultiheadAttention, args: tuple, kwargs: dict
    ) -> TupleOf:
        if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
            raise EncodingError(
                f"{path}: MultiheadAttention with separate kdim/vdim, bias_k/bias_v or "
                "add_zero_attn is not supported"
            )
        q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")][len(args) :])[:3]
        e = mod.embed_dim
        bias = f"{path}.in_proj_bias" if mod.in_proj_bias is not None else None
        xs = []
        for i, x in enumerate((q, k, v)):
            x = need(x, path, mod)
            arg = node.args[i] if i < len(node.args) else node.kwargs[("query", "key", "value")[i]]
            if x.dim != rank_of(arg) - 1:
                raise EncodingError(
                    f"{path}: expected embeddings on the last axis, found axis {x.dim}"
                )
            xs.append(x)
        out = mod.out_proj
        cid = self.attention_blocks(
            path,
            xs,
            e,
            f"{path}.in_proj_weight",
            bias,
            f"{path}.out_proj",
            out.out_features,
            f"{path}.out_proj.weight",
            f"{path}.out_proj.bias" if out.bias is not None else None,
            mod.num_heads,
        )
        rank = rank_of(node.args[0] if node.args else node.kwargs["query"])
        return TupleOf(
            [Chan(rank - 1, ((self.set_of(cid), 0, out.out_features),), fresh=cid), None]
        )

    def attention_blocks(
        self,
        path: str,
        xs: list[Chan],
        e: int,
        in_weight: str,
        in_bias: str | None,
        out_path: str,
        out_size: int,
        out_weight: str,
        out_bias: str | None,
        heads: int,
    ) -> int:
        """q, k, v blocks over the thirds of one ``(3e, in)`` weight reading ``xs`` and an
        output projection reading v; returns the output projection's contributor id."""
        chans = []
        for i, (kind, x) in enumerate(zip((EdgeKind.ATTN_Q, EdgeKind.ATTN_K, EdgeKind.ATTN_V), xs)):
            cid = self.add_layer(
                f"{path}:{'qkv'[i]}",
                kind,
                x,
                e,
                in_weight,
                bias=in_bias,
                bias_start=i * e,
                set_kind=NodeKind.ATTENTION,
                heads=heads,
            )
            self.depth -= 1  # q, k and v are computed side by side
            chans.append(Chan(x.dim, ((self.set_of(cid), 0, e),)))
        self.depth += 1
        return self.add_layer(
            out_path,
            EdgeKind.ATTN_OUT,
            chans[2],
            out_size,
            out_weight,
            bias=out_bias,
            heads=heads,
        )
