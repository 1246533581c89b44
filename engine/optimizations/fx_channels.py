"""Dependency-aware channel pruning of torch.export graphs (aten ops, weights held as module attributes).

Channels are followed from the op that makes them (a convolution's output channels, a linear layer's output
features) through the ops that keep them apart (activations, batch norm, pooling, flatten, residual adds)
to the ops that consume them (the next convolution's or linear layer's input). Channels joined by an
elementwise op, such as a residual add, form one group and are pruned together, so shapes stay consistent.
A group that reaches an op this module does not know, the graph's output, or a weight used elsewhere is
left whole and the reason is reported. Baked shape constants (a view's [-1, 512]) are rewritten.
Imports torch: imported lazily by the pruning pass.
"""

from __future__ import annotations

import math
import operator
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from engine.optimizations import surgery

# elementwise ops with one tensor input: the channels pass through unchanged
_UNARY = frozenset({
    "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu",
    "leaky_relu_", "elu", "elu_", "selu", "celu", "mish", "softplus", "abs", "neg", "exp", "sqrt", "rsqrt",
    "square", "clamp", "clamp_", "clamp_min", "clamp_max", "dropout", "feature_dropout", "alpha_dropout",
    "clone", "contiguous", "alias", "detach", "lift_fresh_copy", "_to_copy", "to", "pow", "log", "erf",
})
_BINARY = frozenset({"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "rsub", "maximum", "minimum"})
# ops over spatial dimensions that keep the channels on dim 1 (tuple results: values and indices)
_POOL = frozenset({
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "upsample_nearest2d",
    "upsample_bilinear2d",
})
_POOL_TUPLE = frozenset({"max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool1d",
                         "adaptive_max_pool2d", "native_dropout"})
_REDUCE = frozenset({"mean", "sum", "amax", "amin"})
_SOFTMAX = frozenset({"softmax", "_softmax", "log_softmax", "_log_softmax"})
_OUTPUT = "the model's output"


@dataclass(frozen=True)
class Track:
    """Where a tensor carries a group's channels: along `dim`, each channel `expand` entries wide."""

    group: int
    dim: int
    expand: int


@dataclass(frozen=True)
class _Slice:
    target: str
    dim: int
    expand: int
    score: bool  # a weight whose per-channel norm counts toward the channel's importance


@dataclass(frozen=True)
class _Fix:
    node: str
    index: int
    item: int | None
    expand: int  # the new value is kept channels x expand


@dataclass
class _Group:
    size: int
    op: str
    slices: list[_Slice] = field(default_factory=list)
    fixes: list[_Fix] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)


@dataclass
class PruneReport:
    groups: int = 0  # channel groups inside the model (the outputs' are not counted)
    pruned: int = 0
    whole: int = 0  # groups left whole because their channels meet something this module cannot rewrite
    channels_before: int = 0
    channels_after: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    blocked: Counter[str] = field(default_factory=Counter)


def _shape(node: Any) -> tuple[Any, ...] | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _same(a: Any, b: Any) -> bool:
    if _int(a) is not None and _int(b) is not None:
        return bool(a == b)
    return str(a) == str(b)


def _prod(dims: tuple[Any, ...]) -> int | None:
    values = [_int(d) for d in dims]
    return math.prod(v for v in values if v is not None) if all(v is not None for v in values) else None


def _args(node: fx.Node) -> Any:
    """A node's arguments, untyped: aten schemas say what each holds, the fx types cannot."""
    return node.args


def _flat_nodes(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    for item in args:
        if isinstance(item, fx.Node):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out.extend(_flat_nodes(item))
        elif isinstance(item, dict):
            out.extend(_flat_nodes(list(item.values())))
    return out


class _Analysis:
    """One pass over the graph in order, assigning channel groups to tensors."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.parent: list[int] = []
        self.groups: list[_Group] = []
        self.state: dict[fx.Node, Any] = {}
        self.covered: set[tuple[str, str]] = set()  # (attribute target, node name) uses that were understood
        self.handlers: dict[str, Callable[[fx.Node, str], Any]] = {
            "conv1d": self._conv, "conv2d": self._conv, "conv3d": self._conv, "convolution": self._conv,
            "conv_transpose1d": self._conv, "conv_transpose2d": self._conv, "conv_transpose3d": self._conv,
            "linear": self._linear, "batch_norm": self._batch_norm,
            "_native_batch_norm_legit_no_training": self._batch_norm, "_native_batch_norm_legit": self._batch_norm,
            "native_batch_norm": self._batch_norm, "flatten": self._flatten, "view": self._view,
            "reshape": self._view, "_unsafe_view": self._view, "permute": self._permute,
            "transpose": self._transpose, "t": self._transpose, "unsqueeze": self._unsqueeze,
            "squeeze": self._squeeze, "cat": self._cat, "concat": self._cat, "sym_size": self._sym_size,
            "slice": self._slice_op, "select": self._select,
        }

    # --- groups -------------------------------------------------------------------------------

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def new(self, size: int, op: str) -> int:
        self.parent.append(len(self.groups))
        self.groups.append(_Group(int(size), op))
        return len(self.groups) - 1

    def group(self, track: Track | int) -> _Group:
        return self.groups[self.find(track.group if isinstance(track, Track) else track)]

    def union(self, a: int, b: int, why: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        ga, gb = self.groups[ra], self.groups[rb]
        keep, gone = (ra, rb) if ra < rb else (rb, ra)
        self.parent[gone] = keep
        k, g = self.groups[keep], self.groups[gone]
        k.slices += g.slices
        k.fixes += g.fixes
        k.blocked |= g.blocked
        if ga.size != gb.size:
            k.blocked.add(f"{why} joins {ga.size} and {gb.size} channels")
        return keep

    def block(self, track: Track | None, reason: str) -> None:
        if track is not None:
            self.group(track).blocked.add(reason)

    def slice(self, track: Track | int, target: str | None, dim: int, expand: int = 1, score: bool = False) -> None:
        if target is not None:
            self.group(track).slices.append(_Slice(target, dim, expand, score))

    # --- graph helpers ------------------------------------------------------------------------

    def track(self, arg: Any) -> Track | None:
        state = self.state.get(arg) if isinstance(arg, fx.Node) else None
        return state if isinstance(state, Track) else None

    def attr(self, arg: Any) -> str | None:
        return str(arg.target) if isinstance(arg, fx.Node) and arg.op == "get_attr" else None

    def tensor(self, target: str) -> torch.Tensor:
        value = surgery.get(self.gm, target)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{target} is not a tensor")
        return value

    def cover(self, node: fx.Node, *targets: str | None) -> None:
        for target in targets:
            if target is not None:
                self.covered.add((target, node.name))

    def block_args(self, node: fx.Node, reason: str) -> None:
        for arg in _flat_nodes([node.args, node.kwargs]):
            state = self.state.get(arg)
            for track in state if isinstance(state, tuple) else (state,):
                if isinstance(track, Track):
                    self.block(track, reason)

    @staticmethod
    def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
        if len(node.args) > index:
            return _args(node)[index]
        return node.kwargs.get(name, default)

    # --- the walk -----------------------------------------------------------------------------

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "call_function":
                self.state[node] = self.call(node)
            elif node.op == "output":
                self.block_args(node, _OUTPUT)
            elif node.op in ("call_module", "call_method"):
                self.block_args(node, str(node.target))

    def call(self, node: fx.Node) -> Any:
        if node.target is operator.getitem:
            source, index = _args(node)[0], _args(node)[1]
            state = self.state.get(source) if isinstance(source, fx.Node) else None
            if isinstance(state, tuple):
                return state[index] if isinstance(index, int) and index < len(state) else None
            if isinstance(state, Track):
                self.block(state, "indexing")
            return None
        if not isinstance(node.target, torch._ops.OpOverload):
            self.block_args(node, getattr(node.target, "__name__", str(node.target)))
            return None
        name = node.target._schema.name.split("::")[-1]
        if name in self.handlers:
            return self.handlers[name](node, name)
        if name in _UNARY:
            return self._unary(node, name)
        if name in _BINARY:
            return self._binary(node, name)
        if name in _POOL or name in _POOL_TUPLE:
            return self._pool(node, name)
        if name in _REDUCE:
            return self._reduce(node, name)
        if name in _SOFTMAX:
            return self._softmax(node, name)
        self.block_args(node, name)
        return None

    # --- producers and consumers --------------------------------------------------------------

    def _conv(self, node: fx.Node, name: str) -> Track | None:
        if name == "convolution":
            transposed = bool(self.arg(node, 6, "transposed", False))
            groups_index = 8
        else:
            transposed = name.startswith("conv_transpose")
            groups_index = 6
        groups = self.arg(node, groups_index, "groups", 1)
        x, w, b = _args(node)[0], _args(node)[1], self.arg(node, 2, "bias")
        wt, bt = self.attr(w), self.attr(b)
        tin = self.track(x)
        if wt is None or (b is not None and bt is None):
            self.block_args(node, f"{name} with computed weights")
            return None
        self.cover(node, wt, bt)
        weight = self.tensor(wt)
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        if groups == 1:
            if tin is not None:
                if tin.dim != 1 or tin.expand != 1:
                    self.block(tin, f"{name} input layout")
                else:
                    self.slice(tin, wt, in_dim, score=True)
            g = self.new(weight.shape[out_dim], name)
            self.slice(g, wt, out_dim, score=True)
            self.slice(g, bt, 0)
            return Track(g, 1, 1)
        depthwise = not transposed and weight.shape[1] == 1 and groups == weight.shape[0]
        if depthwise and tin is not None and tin.dim == 1 and tin.expand == 1 and len(node.args) > groups_index:
            self.slice(tin, wt, 0, score=True)
            self.slice(tin, bt, 0)
            self.group(tin).fixes.append(_Fix(node.name, groups_index, None, 1))
            return tin
        self.block(tin, f"grouped {name}")
        return None

    def _linear(self, node: fx.Node, name: str) -> Track | None:
        x, w, b = _args(node)[0], _args(node)[1], self.arg(node, 2, "bias")
        wt, bt = self.attr(w), self.attr(b)
        tin, sx, so = self.track(x), _shape(x), _shape(node)
        if wt is None or (b is not None and bt is None) or sx is None or so is None:
            self.block_args(node, "linear with computed weights")
            return None
        self.cover(node, wt, bt)
        if tin is not None:
            if tin.dim != len(sx) - 1:
                self.block(tin, "linear input layout")
            else:
                self.slice(tin, wt, 1, tin.expand, score=True)
        g = self.new(self.tensor(wt).shape[0], name)
        self.slice(g, wt, 0, score=True)
        self.slice(g, bt, 0)
        return Track(g, len(so) - 1, 1)

    def _batch_norm(self, node: fx.Node, name: str) -> Any:
        tin = self.track(_args(node)[0])
        tensors = [_args(node)[i] if len(node.args) > i else None for i in range(1, 5)]
        targets = [self.attr(t) for t in tensors]
        if any(t is not None and target is None for t, target in zip(tensors, targets, strict=True)):
            self.block_args(node, f"{name} with computed statistics")
            return None
        self.cover(node, *targets)
        out: Track | None = tin
        if tin is not None and (tin.dim != 1 or tin.expand != 1):
            self.block(tin, f"{name} layout")
            out = None
        elif tin is not None:
            for i, target in enumerate(targets):
                self.slice(tin, target, 0, score=i == 0)  # gamma says how much a channel matters
        return out if name == "batch_norm" else (out, None, None)

    # --- ops that keep or move the channels ---------------------------------------------------

    def _unary(self, node: fx.Node, name: str) -> Track | None:
        tin = self.track(_args(node)[0])
        if tin is None:
            return None
        if any(isinstance(a, fx.Node) for a in _flat_nodes([_args(node)[1:], node.kwargs])):
            self.block(tin, name)
            return None
        return tin

    def _pool(self, node: fx.Node, name: str) -> Any:
        tin = self.track(_args(node)[0])
        if tin is not None and (tin.dim != 1 or tin.expand != 1):
            self.block(tin, f"{name} layout")
            tin = None
        return (tin, tin) if name in _POOL_TUPLE else tin

    def _binary(self, node: fx.Node, name: str) -> Track | None:
        out = _shape(node)
        operands = [a for a in _args(node)[:2] if isinstance(a, fx.Node) and _shape(a) is not None]
        tracked = [(a, t) for a in operands if (t := self.track(a)) is not None]
        if not tracked:
            return None
        if out is None:
            self.block_args(node, name)
            return None
        rank = len(out)
        dims = {t.dim + rank - len(_shape(a) or ()) for a, t in tracked}
        expands = {t.expand for _, t in tracked}
        if len(dims) != 1 or len(expands) != 1:
            for _, t in tracked:
                self.block(t, f"{name} of differently laid out channels")
            return None
        d, expand = dims.pop(), expands.pop()
        root = tracked[0][1].group
        for a, t in tracked:
            root = self.union(root, t.group, name)
            if not _same((_shape(a) or ())[t.dim], out[d]):
                self.block(t, f"{name} broadcasting the channels")
        for a in operands:
            if self.track(a) is not None:
                continue
            shape = _shape(a) or ()
            local = d - (rank - len(shape))
            if local < 0 or _int(shape[local]) == 1:
                continue  # broadcasts along the channels
            target = self.attr(a)
            if target is None:
                self.block(Track(root, d, expand), f"{name} with a computed tensor")
            else:
                self.cover(node, target)
                self.slice(root, target, local, expand)
        return Track(self.find(root), d, expand)

    def _flatten(self, node: fx.Node, name: str) -> Track | None:
        tin, shape = self.track(_args(node)[0]), _shape(_args(node)[0])
        if tin is None or shape is None:
            return None
        rank = len(shape)
        start = self.arg(node, 1, "start_dim", 0) % max(rank, 1)
        end = self.arg(node, 2, "end_dim", -1) % max(rank, 1)
        if tin.dim < start:
            return tin
        if tin.dim > end:
            return Track(tin.group, tin.dim - (end - start), tin.expand)
        inner = _prod(shape[start + 1:end + 1])
        if tin.dim == start and inner is not None:
            return Track(tin.group, start, tin.expand * inner)
        self.block(tin, "flatten of the channels into an earlier dimension")
        return None

    def _fix_shape(self, node: fx.Node, track: Track, out_dim: int, expand: int) -> bool:
        sizes = _args(node)[1] if len(node.args) > 1 else None
        if not isinstance(sizes, (list, tuple)) or out_dim >= len(sizes):
            self.block(track, "view with a computed shape")
            return False
        entry = sizes[out_dim]
        if _int(entry) is not None and entry != -1:
            self.group(track).fixes.append(_Fix(node.name, 1, out_dim, expand))
        elif _int(entry) is None:
            self.block(track, "view with a computed channel size")
            return False
        return True

    def _view(self, node: fx.Node, name: str) -> Track | None:
        tin, si, so = self.track(_args(node)[0]), _shape(_args(node)[0]), _shape(node)
        if tin is None:
            return None
        if si is None or so is None:
            self.block(tin, name)
            return None
        d = tin.dim
        if len(so) > d and all(_same(si[i], so[i]) for i in range(d)):
            tail = _prod(si[d:])
            if len(so) == d + 1 and tail is not None and _int(so[d]) == tail:  # trailing dims merged into channels
                expand = tin.expand * (_prod(si[d + 1:]) or 1)
                return Track(tin.group, d, expand) if self._fix_shape(node, tin, d, expand) else None
            rest_in, rest_out = _prod(si[d + 1:]), _prod(so[d + 1:])
            if _same(si[d], so[d]) and rest_in is not None and rest_in == rest_out and tin.expand == 1:
                return Track(tin.group, d, 1) if self._fix_shape(node, tin, d, 1) else None
        k = len(si) - d  # channels and what follows them unchanged, leading dims regrouped
        if len(so) >= k and all(_same(si[d + i], so[len(so) - k + i]) for i in range(k)):
            nd = len(so) - k
            return Track(tin.group, nd, tin.expand) if self._fix_shape(node, tin, nd, tin.expand) else None
        self.block(tin, f"{name} that splits the channels")
        return None

    def _slice_op(self, node: fx.Node, name: str) -> Track | None:
        """x[:, a:b]: fine along other dims, and along the channels only when it keeps them all."""
        tin, shape, out = self.track(_args(node)[0]), _shape(_args(node)[0]), _shape(node)
        if tin is None:
            return None
        if shape is None or out is None:
            self.block(tin, name)
            return None
        dim = int(self.arg(node, 1, "dim", 0)) % len(shape)
        if dim == tin.dim and not _same(shape[dim], out[dim]):
            self.block(tin, "a slice of the channels")
            return None
        if dim == tin.dim:  # a full slice: its end may be the channel count, baked
            end = self.arg(node, 3, "end")
            if _int(end) is not None and end != sys.maxsize and end < 2**62:
                self.block(tin, "a slice of the channels with a baked end")
                return None
        return tin

    def _select(self, node: fx.Node, name: str) -> Track | None:
        tin, shape = self.track(_args(node)[0]), _shape(_args(node)[0])
        if tin is None:
            return None
        dim = int(_args(node)[1]) % len(shape) if shape else -1
        if dim < 0 or dim == tin.dim:
            self.block(tin, "a selection of one channel")
            return None
        return Track(tin.group, tin.dim - 1 if dim < tin.dim else tin.dim, tin.expand)

    def _permute(self, node: fx.Node, name: str) -> Track | None:
        tin = self.track(_args(node)[0])
        if tin is None:
            return None
        order = [int(p) % len(_args(node)[1]) for p in _args(node)[1]]
        return Track(tin.group, order.index(tin.dim), tin.expand)

    def _transpose(self, node: fx.Node, name: str) -> Track | None:
        tin, shape = self.track(_args(node)[0]), _shape(_args(node)[0])
        if tin is None or shape is None:
            return None
        rank = len(shape)
        a, b = (0, 1) if name == "t" else (int(_args(node)[1]) % rank, int(_args(node)[2]) % rank)
        dim = b if tin.dim == a else a if tin.dim == b else tin.dim
        return Track(tin.group, dim, tin.expand)

    def _unsqueeze(self, node: fx.Node, name: str) -> Track | None:
        tin, out = self.track(_args(node)[0]), _shape(node)
        if tin is None or out is None:
            return None
        k = int(_args(node)[1]) % len(out)
        return Track(tin.group, tin.dim + 1 if k <= tin.dim else tin.dim, tin.expand)

    def _squeeze(self, node: fx.Node, name: str) -> Track | None:
        tin, shape = self.track(_args(node)[0]), _shape(_args(node)[0])
        if tin is None or shape is None:
            return None
        if len(node.args) > 1:
            dims = _args(node)[1] if isinstance(_args(node)[1], (list, tuple)) else [_args(node)[1]]
            removed = {int(k) % len(shape) for k in dims if _int(shape[int(k) % len(shape)]) == 1}
        else:
            removed = {i for i, s in enumerate(shape) if _int(s) == 1}
        if tin.dim in removed:
            self.block(tin, "squeeze of the channels")
            return None
        return Track(tin.group, tin.dim - sum(1 for k in removed if k < tin.dim), tin.expand)

    def _reduce(self, node: fx.Node, name: str) -> Track | None:
        tin, shape = self.track(_args(node)[0]), _shape(_args(node)[0])
        if tin is None:
            return None
        dims = self.arg(node, 1, "dim")
        if shape is None or not isinstance(dims, (list, tuple)) or not dims:
            self.block(tin, f"{name} over the channels")
            return None
        reduced = {int(k) % len(shape) for k in dims}
        if tin.dim in reduced:
            self.block(tin, f"{name} over the channels")
            return None
        keepdim = bool(self.arg(node, 2, "keepdim", False))
        return Track(tin.group, tin.dim if keepdim else tin.dim - sum(1 for k in reduced if k < tin.dim), tin.expand)

    def _softmax(self, node: fx.Node, name: str) -> Track | None:
        tin, shape = self.track(_args(node)[0]), _shape(_args(node)[0])
        if tin is None:
            return None
        if shape is None or int(_args(node)[1]) % len(shape) == tin.dim:
            self.block(tin, f"{name} over the channels")
            return None
        return tin

    def _cat(self, node: fx.Node, name: str) -> Track | None:
        tensors = list(_args(node)[0])
        tracked = [self.track(t) for t in tensors]
        if not any(tracked):
            return None
        out = _shape(node)
        dim = int(self.arg(node, 1, "dim", 0)) % len(out) if out else -1
        tracks = [t for t in tracked if t is not None]
        if len(tracks) != len(tensors) or len({(t.dim, t.expand) for t in tracks}) != 1 or tracks[0].dim == dim:
            for t in tracks:
                self.block(t, f"{name} of the channels")
            return None
        root = tracks[0].group
        for t in tracks[1:]:
            root = self.union(root, t.group, name)
        return Track(self.find(root), tracks[0].dim, tracks[0].expand)

    def _sym_size(self, node: fx.Node, name: str) -> None:
        tin, shape = self.track(_args(node)[0]), _shape(_args(node)[0])
        if tin is not None and shape is not None and int(_args(node)[1]) % len(shape) == tin.dim:
            self.block(tin, "a size read of the channels")

    # --- the plan -----------------------------------------------------------------------------

    def roots(self) -> list[int]:
        return sorted({self.find(g) for g in range(len(self.groups))})

    def check(self) -> None:
        """Leave whole the groups whose tensors are shared, used by ops not understood, or mis-sized."""
        owners: dict[tuple[str, int], set[int]] = defaultdict(set)
        for root in self.roots():
            for s in self.groups[root].slices:
                owners[(s.target, s.dim)].add(root)
        for roots in owners.values():
            if len(roots) > 1:
                for root in roots:
                    self.groups[root].blocked.add("a weight shared between channel groups")
        foreign = {str(n.target) for n in self.gm.graph.nodes if n.op == "get_attr"
                   and any((str(n.target), user.name) not in self.covered for user in n.users)}
        for root in self.roots():
            group = self.groups[root]
            for s in group.slices:
                if s.target in foreign:
                    group.blocked.add("a weight also used by other ops")
                elif self.tensor(s.target).shape[s.dim] != group.size * s.expand:
                    group.blocked.add("a tensor whose size does not match its channels")


def prune_graph(gm: fx.GraphModule, ratio: float) -> tuple[list[surgery.Edit], PruneReport]:
    """Remove `ratio` of the channels of every prunable group (by weight magnitude); return the edits."""
    analysis = _Analysis(gm)
    analysis.run()
    analysis.check()
    report = PruneReport()
    plans: list[tuple[_Group, list[int]]] = []
    for root in analysis.roots():
        group = analysis.groups[root]
        if group.blocked == {_OUTPUT}:
            continue  # the model's outputs (its logits) keep their size by definition
        report.groups += 1
        if group.blocked:
            report.whole += 1
            report.blocked.update(group.blocked)
            continue
        kept = max(1, round(group.size * (1 - ratio)))
        if kept == group.size:
            continue
        score = torch.zeros(group.size, dtype=torch.float64)
        seen: set[tuple[str, int]] = set()
        for s in group.slices:
            if not s.score or (s.target, s.dim) in seen:
                continue
            seen.add((s.target, s.dim))
            score += surgery.slice_norms(analysis.tensor(s.target), s.dim, group.size)
        plans.append((group, surgery.top_indices(score, kept)))
        report.pruned += 1
        report.channels_before += group.size
        report.channels_after += kept
        report.ops[group.op] += 1
    edits: list[surgery.Edit] = []
    for group, keep in plans:
        done: set[tuple[str, int]] = set()
        for s in group.slices:
            if (s.target, s.dim) in done:
                continue
            done.add((s.target, s.dim))
            index = [c * s.expand + j for c in keep for j in range(s.expand)]
            edits.append(surgery.slice_tensor(gm, s.target, s.dim, index))
        for fix in group.fixes:
            edits.append(surgery.set_node_arg(gm, fix.node, fix.index, fix.item, len(keep) * fix.expand))
    gm.recompile()
    return edits, report
