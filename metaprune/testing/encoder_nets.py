"""Tiny hand-built modules, one per tracer rule added for timm (issue 13)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FunctionalBN",
    "ModuleBN",
    "StdConv",
    "DynamicConv",
    "SplitCat",
    "Shuffle",
    "FusedAttention",
    "HeadMajorAttention",
    "EinsumAttention",
    "SelectiveBranches",
    "ShapeBranch",
    "GatedBranches",
    "ChannelConv",
    "GRNMixer",
    "exact_round_trip",
]


class ModuleBN(nn.Module):
    """conv -> BatchNorm2d -> relu -> conv -> GroupNorm, as modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 1)
        self.gn = nn.GroupNorm(2, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(self.conv2(torch.relu(self.bn(self.conv1(x)))))


class FunctionalBN(ModuleBN):
    """The same network with the norms called functionally (timm's ``BatchNormAct2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, gn = self.bn, self.gn
        h = self.conv1(x)
        h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.1, 1e-5)
        h = self.conv2(torch.relu(h))
        return F.group_norm(h, 2, gn.weight, gn.bias, 1e-5)


class StdConv(nn.Module):
    """A weight-standardised convolution: the functional conv reads a transformed weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 3, 3, 3))
        self.bias = nn.Parameter(torch.randn(5))
        self.gain = nn.Parameter(torch.rand(5, 1, 1, 1) + 0.5)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5) * self.gain
        h = F.conv2d(x, w, self.bias, stride=1, padding=1)
        return self.fc(h.mean((2, 3)))


class DynamicConv(nn.Module):
    """A convolution whose weight is computed from the input: not representable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean((0, 2, 3)).reshape(1, 3, 1, 1).expand(3, 3, 1, 1)
        return F.conv2d(self.conv(x), w)


class SplitCat(nn.Module):
    """conv -> split [2, 4] -> a conv per piece -> cat with a slice -> conv (Res2Net, GhostNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 1)
        self.conv_a = nn.Conv2d(2, 3, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.conv2 = nn.Conv2d(3 + 4 + 2, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        a, b = torch.split(h, [2, 4], dim=1)
        c = h.chunk(3, dim=1)[2]  # channels 4, 5
        return self.conv2(torch.cat([self.conv_a(a), self.conv_b(b), c], dim=1))


class Shuffle(nn.Module):
    """conv -> channel shuffle (groups 2) -> conv (ShuffleNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 1)
        self.conv2 = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        b, c, hh, ww = h.shape
        h = h.view(b, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(b, c, hh, ww)
        return self.conv2(h)


class FusedAttention(nn.Module):
    """timm's ``Attention``: a fused qkv linear reshaped to ``(B, N, 3, heads, head_dim)``."""

    def __init__(self, dim: int = 8, heads: int = 2, fused: bool = False) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.embed = nn.Conv1d(3, dim, 1)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).transpose(1, 2)  # (B, 3, N) -> tokens (B, N, C)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
            o = attn.softmax(dim=-1) @ v
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class HeadMajorAttention(nn.Module):
    """MaxViT's layout: qkv rows ordered (heads, 3 * head_dim), split with ``chunk``."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv1d(3, dim, 1)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).transpose(1, 2)  # (B, 3, N) -> tokens (B, N, C)
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, self.heads, 3 * c // self.heads).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=3)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class EinsumAttention(FusedAttention):
    """torchvision's MaxViT: the same attention written with ``einsum``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).transpose(1, 2)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.einsum("B H I D, B H J D -> B H I J", q, k).softmax(dim=-1)
        o = torch.einsum("B H I J, B H J D -> B H I D", attn, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class SelectiveBranches(nn.Module):
    """Selective kernel (SKNet): two branches stacked, a softmax over them from their sum
    gates each, the gated branches are summed."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.reduce = nn.Conv2d(4, 2, 1)
        self.select = nn.Conv2d(2, 8, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        paths = torch.stack([self.a(x), self.b(x)], dim=1)  # (B, 2, 4, H, W)
        attn = self.select(torch.relu(self.reduce(paths.sum(1).mean((2, 3), keepdim=True))))
        attn = torch.softmax(attn.view(x.shape[0], 2, 4, 1, 1), dim=1)
        return self.head(torch.sum(paths * attn, dim=1))


class ShapeBranch(nn.Module):
    """timm's VGG head: ``if`` on the input's spatial size (fx cannot trace it symbolically)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Conv2d(4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if h.shape[-1] < 3:
            h = F.adaptive_avg_pool2d(h, (3, 3))
        return self.fc(h)


class GatedBranches(nn.Module):
    """MambaOut / GhostNet-V2: a product of two slices of one layer (no operand is a whole
    layer output), and single-head attention with channels before the tokens (SHViT)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Conv1d(3, 8, 1)
        self.qkv = nn.Conv1d(4, 12, 1)
        self.out = nn.Conv1d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, i = self.fc(x).split([4, 4], dim=1)  # (B, 4, N) each
        h = torch.sigmoid(g) * i
        q, k, v = self.qkv(h).split([4, 4, 4], dim=1)  # one head, channels before tokens
        attn = (q.transpose(-2, -1) @ k).softmax(dim=-1)  # (B, N, N)
        return self.out(v @ attn.transpose(-2, -1))


class ChannelConv(nn.Module):
    """ECA: a 1-D convolution sliding along the channel axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 1)
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv0(x)
        y = self.conv(h.mean((2, 3)).view(h.shape[0], 1, -1))
        return h * y.sigmoid().view(h.shape[0], -1, 1, 1)


class GRNMixer(nn.Module):
    """Token-mixing linear (MLP-Mixer), ResMLP's addcmul affine, ConvNeXt-V2's GRN."""

    def __init__(self, tokens: int = 4, dim: int = 6) -> None:
        super().__init__()
        self.embed = nn.Conv1d(3, dim, 1)
        self.tokens = nn.Linear(tokens, tokens)
        self.alpha = nn.Parameter(torch.randn(dim))
        self.beta = nn.Parameter(torch.randn(dim))
        self.gamma = nn.Parameter(torch.randn(dim))
        self.fc = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(1, 2)  # (B, 3, N) -> tokens (B, N, C)
        h = h + self.tokens(h.transpose(1, 2)).transpose(1, 2)
        h = torch.addcmul(self.beta, self.alpha, h)
        g = h.norm(p=2, dim=1, keepdim=True)
        h = h + self.gamma * (h * (g / (g.mean(dim=-1, keepdim=True) + 1e-6)))
        return self.fc(h.mean(1))


def exact_round_trip(model: nn.Module, x: torch.Tensor):  # noqa: ANN201
    """Encode, decode, reload into a zeroed copy: states and outputs bit-equal."""
    import copy

    from graph_encoding import decode, encode

    graph = encode(model, x)
    state = decode(graph, model)
    reference = model.state_dict()
    assert list(state) == list(reference)
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
    rebuilt = copy.deepcopy(model)
    with torch.no_grad():
        for p in rebuilt.parameters():
            p.zero_()
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    graph.validate()
    return graph
