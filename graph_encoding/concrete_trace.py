"""Tracing through Python control flow on shapes, for the example inputs' shapes.

``torch.fx.symbolic_trace`` cannot take an ``if x.shape[-2] < 7:`` (timm's VGG head):
the shape is symbolic. :class:`ConcreteTracer` runs every op on the example inputs while it
records it, so such a condition evaluates to the branch those inputs take. The graph is
then specialised to the input shapes, which a plan already is (the plan cache keys on
them). It is only the fallback when symbolic tracing fails.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx

__all__ = ["ConcreteTracer", "concrete_trace"]

_SHAPE_ATTRS = {"shape", "ndim"}


class ConcreteTracer(torch.fx.Tracer):
    """A symbolic tracer that also computes every traced value on the example inputs."""

    def __init__(self, inputs: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.inputs = [x.clone() for x in inputs]
        self.placeholders = 0
        self.running = False  # computing a value: fx's module patches step aside

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if self.running:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: torch.nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self.running:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any):  # noqa: ANN201
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **kw)
        if self.running:
            return proxy
        self.running = True
        try:
            proxy.node.meta["concrete"] = self._run(proxy.node)
        except Exception:  # noqa: BLE001 - the value stays unknown; control flow on it fails
            pass
        finally:
            self.running = False
        return proxy

    def _run(self, node: torch.fx.Node) -> Any:
        args = torch.fx.node.map_arg(node.args, lambda n: n.meta["concrete"])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: n.meta["concrete"])
        if node.op == "placeholder":
            self.placeholders += 1
            return self.inputs[self.placeholders - 1]
        if node.op == "get_attr":
            return operator.attrgetter(str(node.target))(self.root)  # running: plain getattr
        with torch.no_grad():
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            if node.op == "call_module":
                return self.root.get_submodule(str(node.target))(*args, **kwargs)
        raise KeyError(node.op)

    def to_bool(self, obj: torch.fx.Proxy) -> bool:
        if isinstance(obj.node.meta.get("concrete", obj), torch.fx.Proxy) or not _of_shapes(
            obj.node
        ):
            return super().to_bool(obj)  # a condition on values, not shapes: still refused
        return bool(obj.node.meta["concrete"])

    def iter(self, obj: torch.fx.Proxy) -> Iterator:
        value = obj.node.meta.get("concrete")
        if not isinstance(value, (tuple, list, torch.Size)):
            return super().iter(obj)
        return iter([obj[i] for i in range(len(value))])


def _of_shapes(node: torch.fx.Node) -> bool:
    """Whether ``node`` is computed from tensor shapes only (never from tensor values)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if (n.op == "call_function" and n.target is getattr and n.args[1] in _SHAPE_ATTRS) or (
            n.op == "call_method" and n.target in {"size", "dim"}
        ):
            continue
        if n.op in {"placeholder", "get_attr", "call_module"}:
            return False
        todo.extend(n.all_input_nodes)
    return True


def concrete_trace(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]
) -> torch.fx.GraphModule:
    tracer = ConcreteTracer(inputs)
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
