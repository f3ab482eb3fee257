"""Trace a model with torch.fx and follow its channels to build a :class:`Plan`.

Every fx value that carries channels gets a :class:`Chan`: which channel axis it has and
which graph nodes its channels are (segments of node sets). Layers read one contiguous
node range and write a fresh node set; a residual add or a gate merges the sets of the
layers that feed it (union-find), and values that are not a layer's own output reach a
merged set through identity edges. Nothing here touches parameter values.
"""

from __future__ import annotations

import math
import operator
from dataclasses import replace

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .channels import (
    Chan,
    Contributor,
    EncodingError,
    RawBlock,
    RawSet,
    describe,
    flatten,
    map_args,
)
from .concrete_trace import concrete_trace
from .functional_rules import FUNCTIONAL_LAYERS, OPAQUE_FUNCTIONS, FunctionalRules
from .layer_rules import LayerRules
from .op_rules import OpRules
from .plan import Block, NodePlacement, NodeSetInfo, Plan, role_column
from .schema import ROLES, SLOT, EdgeKind, NodeKind, NormKind
from .spread_rules import ATTEND, SpreadRules, has_spread
from .vocab import (
    ADD,
    ELEMENTWISE_FUNCTIONS,
    ELEMENTWISE_METHODS,
    MUL,
    PERMUTES,
    POOL_FUNCTIONS,
    RESHAPE_FUNCTIONS,
    RESHAPE_METHODS,
    SHAPE_ONLY,
    SPLIT_FUNCTIONS,
    SPLIT_METHODS,
)

__all__ = ["EncodingError", "Tracer", "build_plan"]


class Tracer(LayerRules, FunctionalRules, SpreadRules, OpRules):
    """Walks a traced module graph and collects node sets, blocks and placements."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.sets: list[RawSet] = []
        self.parent: list[int] = []
        self.blocks: list[RawBlock] = []
        self.contributors: list[Contributor] = []
        self.weights: list[str] = []
        self.depth = 0
        self.used_params: set[str] = set()
        state = model.state_dict(keep_vars=True)
        self.state_keys = set(state)
        self.roles: dict[tuple[int, int], tuple[EdgeKind, int]] = {}  # attention q / k / v
        self.state_shapes = {k: tuple(v.shape) for k, v in state.items()}

    # ------------------------------------------------------------ node sets
    def new_set(self, name: str, size: int, kind: NodeKind) -> int:
        self.sets.append(RawSet(name, size, kind, self.depth))
        self.parent.append(len(self.parent))
        return len(self.sets) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def merge(self, keep: int, other: int, kind: EdgeKind, where: str) -> None:
        keep, other = self.find(keep), self.find(other)
        if keep == other:
            return
        if self.sets[keep].size != self.sets[other].size:
            raise EncodingError(
                f"{where}: cannot merge node sets of sizes {self.sets[keep].size} and "
                f"{self.sets[other].size}"
            )
        for c in self.sets[other].contributors:
            self.blocks[self.contributors[c].block].kind = kind
        self.sets[keep].contributors += self.sets[other].contributors
        self.parent[other] = keep

    def identity_into(self, chan: Chan, out_set: int, name: str) -> None:
        start = 0
        for s, a, b in chan.segs:
            self.blocks.append(
                RawBlock(
                    name, EdgeKind.IDENTITY, s, a, b - a, out_set, start, b - a, depth=self.depth
                )
            )
            start += b - a

    def contiguous(self, chan: Chan, name: str) -> tuple[int, int]:
        """(set, start) of a single node range holding ``chan``'s channels in order."""
        if len(chan.segs) == 1:
            return chan.segs[0][0], chan.segs[0][1]
        s = self.new_set(f"{name}:concat", chan.size, NodeKind.CONCAT)
        self.identity_into(chan, s, f"{name}:concat")
        return s, 0

    def add_layer(
        self,
        name: str,
        kind: EdgeKind,
        chan: Chan,
        out_size: int,
        weight: str,
        *,
        bias: str | None,
        bias_start: int = 0,
        set_kind: NodeKind = NodeKind.HIDDEN,
        **block_kw: object,
    ) -> int:
        """A conv/linear block reading ``chan`` and writing a new node set; returns the
        contributor id."""
        self.depth += 1
        in_set, in_start = self.contiguous(chan, name)
        out_set = self.new_set(name, out_size, set_kind)
        self.blocks.append(
            RawBlock(
                name,
                kind,
                in_set,
                in_start,
                chan.size,
                out_set,
                0,
                out_size,
                weight=weight,
                depth=self.depth,
                **block_kw,
            )  # type: ignore[arg-type]
        )
        self.contributors.append(Contributor(name, len(self.blocks) - 1, bias, bias_start))
        cid = len(self.contributors) - 1
        self.sets[out_set].contributors.append(cid)
        return cid

    def set_of(self, cid: int) -> int:
        return self.find(self.blocks[self.contributors[cid].block].out_set)

    # ------------------------------------------------------------ fx walk
    def run(self, gm: torch.fx.GraphModule) -> list[int]:
        env: dict[torch.fx.Node, object] = {}
        outputs: list[int] = []
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = self.placeholder(node)
            elif node.op == "get_attr":
                self.used_params.add(str(node.target))
                env[node] = None
            elif node.op == "output":
                for v in flatten(map_args(node.args, env)):
                    if isinstance(v, Chan):
                        outputs += [self.find(s) for s, _, _ in v.segs]
            else:
                env[node] = self.visit(node, env)
        return outputs

    def placeholder(self, node: torch.fx.Node) -> Chan | None:
        meta = node.meta.get("tensor_meta")
        if meta is None or len(meta.shape) < 2:
            return None
        size = int(meta.shape[1])
        s = self.new_set(f"input:{node.name}", size, NodeKind.INPUT)
        return Chan(1, ((s, 0, size),))

    def visit(self, node: torch.fx.Node, env: dict) -> object:
        args = map_args(node.args, env)
        kwargs = map_args(node.kwargs, env)
        values = flatten((args, kwargs))
        if has_spread(values) or (  # channels over several axes: attention heads, shuffles
            node.op != "call_module"
            and node.target in ATTEND
            and any(isinstance(v, Chan) for v in values)
        ):
            return self.spread_op(node, args, kwargs)
        chans = [v for v in values if isinstance(v, Chan)]
        if node.op == "call_module":
            return self.call_module(node, self.modules[str(node.target)], args, kwargs)
        if not chans:
            return None  # parameters, shapes: no channels
        target = node.target
        name = describe(node)
        if node.op == "call_function" and target is operator.getitem:
            return self.getitem(node, args, name)
        if node.meta.get("tensor_meta") is None:
            return None  # shapes, sizes, asserts: no channels flow through them
        if node.op == "call_function" and target in OPAQUE_FUNCTIONS:
            return self.opaque_function(node, args, chans)
        if node.op == "call_function" and target in FUNCTIONAL_LAYERS:
            return self.functional_layer(node, args, chans)
        if target in ELEMENTWISE_FUNCTIONS or (
            node.op == "call_method" and target in ELEMENTWISE_METHODS
        ):
            return self.passthrough(node, args[0])
        if (
            target in POOL_FUNCTIONS
            or (node.op == "call_method" and target in {"mean", "sum", "amax", "norm"})
            or target in {torch.mean, torch.sum, torch.amax, torch.norm}
        ):
            return self.reduce(node, args[0])
        if target in RESHAPE_FUNCTIONS or (node.op == "call_method" and target in RESHAPE_METHODS):
            try:
                return self.reshape(node, args[0], name)
            except EncodingError:
                spread = self.spread(node, args[0])
                if spread is None:
                    raise
                return spread
        if node.op == "call_method" and target in SHAPE_ONLY:
            return None
        if target in PERMUTES:
            return self.permute(node, args, name)
        if target is torch.addcmul:
            return self.addcmul(node, args, name)
        if target is torch.roll:
            return self.roll(node, args, kwargs, name)
        if target is F.pad:
            return self.pad(node, args, kwargs, name)
        if target in SPLIT_FUNCTIONS or (node.op == "call_method" and target in SPLIT_METHODS):
            return self.split(node, args, kwargs, name)
        if target is torch.stack:
            return self.stack(node, args, kwargs, name)
        if target is torch.cat or target is torch.concat:
            return self.cat(node, args, kwargs, name)
        if target in ADD or (node.op == "call_method" and target in {"add", "add_", "sub", "sub_"}):
            return self.add(node, args, name)
        if target in MUL or (node.op == "call_method" and target in {"mul", "mul_"}):
            return self.mul(node, args, name)
        if target in {operator.truediv, torch.div} or (
            node.op == "call_method" and target in {"div", "div_"}
        ):
            if isinstance(args[1], Chan):
                raise EncodingError(f"{name}: division by a channel tensor is not supported")
            return self.keep(node, args[0])
        if node.op == "call_method" and target == "expand":
            return self.keep(node, args[0])
        op = getattr(target, "__name__", str(target))
        raise EncodingError(f"{name}: op '{op}' ({node.op}) on channel tensors is not supported")

    # ------------------------------------------------------------ modules
    def by_role(self) -> list[RawBlock]:
        """Blocks, a projection whose rows are attention q / k / v (a fused ``qkv``) cut
        into contiguous runs of one role; the runs tile its weight rows in order."""
        if not self.roles:
            return self.blocks
        roles = {(self.find(s), i): r for (s, i), r in self.roles.items()}
        out: list[RawBlock] = []
        for rb in self.blocks:
            s = self.find(rb.out_set)
            rows = [roles.get((s, rb.out_start + r)) for r in range(rb.out_size)]
            if rb.kind not in (EdgeKind.LINEAR, EdgeKind.CONV) or rb.groups != 1 or not any(rows):
                out.append(rb)
                continue
            if self.sets[s].kind == NodeKind.HIDDEN:
                self.sets[s].kind = NodeKind.ATTENTION
            start = 0
            for r in range(1, rb.out_size + 1):
                if r == rb.out_size or rows[r] != rows[start]:
                    kind, heads = rows[start] or (rb.kind, rb.heads)
                    out.append(
                        replace(
                            rb,
                            kind=kind,
                            heads=heads,
                            out_start=rb.out_start + start,
                            out_size=r - start,
                        )
                    )
                    start = r
        return out

    def finish(
        self, outputs: list[int], state: dict[str, torch.Tensor], param_keys: list[str]
    ) -> Plan:
        raw_blocks = self.by_role()  # before the node sets' kinds are read
        for s in outputs:
            if self.sets[s].kind == NodeKind.HIDDEN:
                self.sets[s].kind = NodeKind.OUTPUT
        reps = [i for i in range(len(self.sets)) if self.find(i) == i]
        offsets, total = {}, 0
        for r in reps:
            offsets[r] = total
            total += self.sets[r].size
        placements: list[NodePlacement] = []
        infos = []
        for r in reps:
            rs = self.sets[r]
            if len(rs.contributors) > ROLES:
                names = [self.contributors[c].name for c in rs.contributors]
                raise EncodingError(
                    f"{rs.name}: {len(names)} layers write the same channels ({', '.join(names)}); "
                    f"the schema holds at most {ROLES}"
                )
            norms = []
            for role, c in enumerate(rs.contributors):
                con = self.contributors[c]
                if con.bias is not None:
                    placements.append(
                        NodePlacement(
                            con.bias,
                            offsets[r],
                            rs.size,
                            role_column(role, SLOT["bias"]),
                            con.bias_start,
                        )
                    )
                norms.append(con.norm[0] if con.norm else NormKind.NONE)
                if con.norm:
                    for slot, key in con.norm[1].items():
                        placements.append(
                            NodePlacement(key, offsets[r], rs.size, role_column(role, SLOT[slot]))
                        )
            norms += [NormKind.NONE] * (ROLES - len(norms))
            infos.append(NodeSetInfo(rs.name, rs.kind, offsets[r], rs.size, rs.depth, tuple(norms)))
        blocks, weights, seen, starts = [], [], {}, {}
        edge_offset = value_offset = 0
        for rb in raw_blocks:  # creation order is topological
            if rb.weight is not None and rb.weight in seen and seen[rb.weight] != value_offset:
                # blocks sharing a weight must tile its rows one after the other (q, k, v);
                # a layer applied twice would need its values twice in edge_flat
                raise EncodingError(
                    f"{rb.name}: a layer applied more than once (shared weight "
                    f"'{rb.weight}') is not supported"
                )
            if rb.weight is not None and rb.weight not in seen:
                weights.append((rb.weight, tuple(state[rb.weight].shape)))
                starts[rb.weight] = value_offset
            b = Block(
                rb.name,
                rb.kind,
                offsets[self.find(rb.out_set)] + rb.out_start,
                rb.out_size,
                offsets[self.find(rb.in_set)] + rb.in_start,
                rb.in_size,
                rb.groups,
                rb.width,
                edge_offset,
                value_offset,
                rb.kernel,
                rb.stride,
                rb.dilation,
                rb.padding,
                rb.depth,
                rb.heads,
            )
            blocks.append(b)
            edge_offset += b.num_edges
            value_offset += b.num_values
            if rb.weight is not None:
                seen[rb.weight] = value_offset  # where the next block of this weight starts
        for key, shape in weights:
            if seen[key] - starts[key] != math.prod(shape):
                raise EncodingError(
                    f"'{key}': the blocks reading it hold {seen[key] - starts[key]} values, it "
                    f"has {math.prod(shape)}: a layer applied more than once (shared weights) "
                    "is not supported"
                )
        placed = {w for w, _ in weights} | {p.key for p in placements}
        state_keys = list(state)
        carried = [k for k in state_keys if k not in placed]
        dtypes = {state[w].dtype for w, _ in weights}
        if len(dtypes) > 1:
            raise EncodingError(
                f"model weights mix dtypes {sorted(map(str, dtypes))}; cast the model first"
            )
        plan = Plan(
            blocks,
            infos,
            placements,
            weights,
            carried,
            param_keys,
            state_keys,
            total,
            edge_offset,
            value_offset,
            dtypes.pop() if dtypes else torch.float32,
        )
        plan.set_coverage({k: v.numel() for k, v in state.items()})
        return plan


def build_plan(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Plan:
    """Trace ``model`` on ``example_inputs`` and compute its graph structure."""
    was_training = model.training
    model.eval()
    try:
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as exc:  # fx raises many types; name the model and the cause
            try:  # control flow on shapes: trace again, specialised to these inputs
                gm = concrete_trace(model, example_inputs)
            except Exception:  # noqa: BLE001 - report the symbolic tracer's reason
                raise EncodingError(
                    f"{type(model).__name__}: torch.fx cannot trace this model "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
        tracer = Tracer(model)
        outputs = tracer.run(gm)
        state = model.state_dict()
        param_keys = [k for k, _ in model.named_parameters()]
        return tracer.finish(outputs, state, param_keys)
    finally:
        model.train(was_training)
