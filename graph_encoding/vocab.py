"""The ops the tracer knows, by kind."""

from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torchvision import ops as tv_ops

__all__ = [
    "ELEMENTWISE_MODULES",
    "POOL_MODULES",
    "ELEMENTWISE_FUNCTIONS",
    "ELEMENTWISE_METHODS",
    "POOL_FUNCTIONS",
    "RESHAPE_FUNCTIONS",
    "RESHAPE_METHODS",
    "ADD",
    "MUL",
    "SHAPE_ONLY",
    "NORMS",
    "SPLIT_FUNCTIONS",
    "SPLIT_METHODS",
    "SWAPS",
    "PERMUTES",
]

ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Softplus,
    nn.Hardtanh,
    nn.PReLU,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Softmax,
    nn.LogSoftmax,
)
POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,  # spatial resizes keep the channels (HRNet's fusion)
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
)
ELEMENTWISE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.silu,
    F.gelu,
    F.sigmoid,
    F.tanh,
    F.hardswish,
    F.hardsigmoid,
    F.leaky_relu,
    F.elu,
    F.mish,
    F.softplus,
    F.hardtanh,
    F.dropout,
    F.softmax,
    F.log_softmax,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.softmax,
    torch.log_softmax,
    torch.clone,
    torch.nn.functional.relu_,
    torch.relu_,
    tv_ops.stochastic_depth,
}
ELEMENTWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "contiguous",
    "clone",
    "softmax",
    "log_softmax",
    "to",
    "float",
    "type_as",
    "detach",
}
POOL_FUNCTIONS = {
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.interpolate,
}
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "reshape_as", "view_as"}
ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
MUL = {operator.mul, operator.imul, torch.mul}
SHAPE_ONLY = {"size", "dim"}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
SPLIT_FUNCTIONS = {torch.split, torch.chunk, torch.tensor_split, torch.unbind}
SPLIT_METHODS = {"split", "chunk", "tensor_split", "unbind"}
SWAPS = {torch.transpose, "transpose", torch.swapaxes, "swapaxes", torch.swapdims, "swapdims"}
PERMUTES = SWAPS | {torch.permute, "permute"}
