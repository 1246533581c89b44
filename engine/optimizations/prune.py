"""Pruning: global magnitude (unstructured) sparsity, and structured removal of channels, neurons and heads.

Unstructured pruning zeroes weights in place: the model keeps its shape, and dense runtimes multiply the
zeros like any other number, so it is not faster. Structured pruning removes whole channels, neurons and
attention heads so that the model becomes smaller on every runtime: torch.export graphs are pruned by
following channels through the graph (fx_channels), Hugging Face encoders by heads and feed-forward width
(encoders). Both record their structural edits so that the build cache can rebuild the variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import NotApplicable
from engine.optimizations.base import OptConfig, implementation, register
from engine.variants import BuildContext

_TORCHSCRIPT_STRUCTURED = (
    "prune-structured cannot rewrite a TorchScript archive (compiled code with its shapes baked in); "
    "upload the model as a torch.export .pt2 or a Hugging Face folder to prune it"
)
_PRUNABLE_SCRIPT_MODULES = frozenset({"Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                                      "ConvTranspose3d"})


def _fraction(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name}={value} must be between 0 and 1 (exclusive), e.g. {name}=0.5")


@dataclass(frozen=True)
class PruneUnstructuredConfig(OptConfig):
    # fraction of all Linear/Conv weights set to zero, smallest magnitudes first across the whole model
    amount: float = 0.5

    def __post_init__(self) -> None:
        _fraction("amount", self.amount)


@dataclass(frozen=True)
class PruneStructuredConfig(OptConfig):
    # fraction of the channels / FFN neurons / attention heads removed from every prunable group
    ratio: float = 0.5

    def __post_init__(self) -> None:
        _fraction("ratio", self.ratio)

    def unsupported_reason(self, model_format: str) -> str | None:
        return _TORCHSCRIPT_STRUCTURED if model_format == "torchscript" else None


register("prune-unstructured", stage="torch", config=PruneUnstructuredConfig, formats=("torch",),
         summary="zero the smallest Linear/Conv weights (global L1); same shapes, so no speedup on dense runtimes")
register("prune-structured", stage="torch", config=PruneStructuredConfig, formats=("torch",),
         summary="remove whole channels, neurons and attention heads: a smaller, faster dense model")


def linear_and_conv_weights(module: Any) -> list[tuple[str, Any]]:
    """(name, tensor) of every Linear / Conv weight, whatever form the module takes."""
    import torch

    if isinstance(module, torch.fx.GraphModule):
        from engine.optimizations import surgery

        ops = {torch.ops.aten.linear.default, torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default,
               torch.ops.aten.conv3d.default, torch.ops.aten.convolution.default}
        names: dict[str, None] = {}
        for node in module.graph.nodes:
            if node.op == "call_function" and node.target in ops and len(node.args) > 1:
                weight = node.args[1]
                if isinstance(weight, torch.fx.Node) and weight.op == "get_attr":
                    names[str(weight.target)] = None
        return [(name, surgery.get(module, name)) for name in names]
    if isinstance(module, torch.jit.ScriptModule):
        return [(f"{name}.weight" if name else "weight", m.weight) for name, m in module.named_modules()
                if getattr(m, "original_name", None) in _PRUNABLE_SCRIPT_MODULES]
    layers = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    return [(f"{name}.weight", m.weight) for name, m in module.named_modules() if isinstance(m, layers)]


@implementation("prune-unstructured", "torch")
def prune_unstructured(module: Any, config: PruneUnstructuredConfig, ctx: BuildContext) -> Any:
    import torch

    weights = linear_and_conv_weights(module)
    if not weights:
        raise NotApplicable("prune-unstructured found no Linear or Conv weights in this model")
    with torch.no_grad():
        magnitudes = torch.cat([w.detach().abs().flatten().float() for _, w in weights])
        total = magnitudes.numel()
        k = round(config.amount * total)
        if k > 0:
            threshold = torch.kthvalue(magnitudes, k).values
            for _, w in weights:
                w.masked_fill_(w.abs() <= threshold.to(w.dtype), 0.0)  # in place: the pruning is permanent
        zeros = sum(int((w == 0).sum()) for _, w in weights)
    ctx.notes.append(
        f"prune-unstructured zeroed {zeros / total:.1%} of {total:,} Linear/Conv weights (global L1 magnitude); "
        "the tensors keep their shapes and dense runtimes multiply the zeros, so expect no speedup, only "
        "a smaller compressed file"
    )
    return module


@implementation("prune-structured", "torch")
def prune_structured(module: Any, config: PruneStructuredConfig, ctx: BuildContext) -> Any:
    import torch

    from engine.modules import HFWrapper, example_tensors, parameter_count

    before = parameter_count(module)
    if isinstance(module, torch.jit.ScriptModule):
        raise NotApplicable(_TORCHSCRIPT_STRUCTURED)
    if isinstance(module, torch.fx.GraphModule):
        what = _prune_graph(module, config, ctx)
    elif isinstance(module, HFWrapper):
        what = _prune_encoder(module, config, ctx)
    else:
        raise NotApplicable(f"prune-structured has no rule for a {type(module).__name__}")
    with torch.no_grad():
        module(*example_tensors(ctx.spec, 2))  # a pruned model that does not run must fail here, not later
    after = parameter_count(module)
    ctx.notes.append(f"prune-structured removed {config.ratio:.0%} of {what}; parameters {before:,} -> {after:,} "
                     f"({after / before:.0%})")
    return module


def _prune_graph(module: Any, config: PruneStructuredConfig, ctx: BuildContext) -> str:
    from engine.optimizations.fx_channels import prune_graph

    edits, report = prune_graph(module, config.ratio)
    if not report.pruned and report.whole < report.groups:
        raise NotApplicable(f"prune-structured:{config.ratio} removes no whole channel: its groups are too small")
    if not report.pruned:
        reasons = ", ".join(f"{r} ({n})" for r, n in report.blocked.most_common(4)) or "the model has none"
        raise NotApplicable(f"prune-structured found no channel group it can remove safely: {reasons}")
    ctx.edits.extend(edits)
    ops = ", ".join(f"{n} {op}" for op, n in sorted(report.ops.items()))
    if report.blocked:
        reasons = ", ".join(r for r, _ in report.blocked.most_common(4))
        ctx.notes.append(f"prune-structured left {report.whole} channel group(s) whole, where "
                         f"channels meet what it cannot rewrite: {reasons}")
    return f"the channels of {report.pruned} group(s) ({ops}; {report.channels_before} -> {report.channels_after})"


def _prune_encoder(module: Any, config: PruneStructuredConfig, ctx: BuildContext) -> str:
    from engine.optimizations.encoders import find_encoder

    encoder = find_encoder(module)
    if encoder is None or not any(layer.attention or layer.ffn for layer in encoder.layers):
        raise NotApplicable(
            f"prune-structured does not know the layout of {type(module.model).__name__}: it prunes BERT-style "
            "encoders (BERT, RoBERTa, ELECTRA, DistilBERT and models with the same projection names)"
        )
    heads = ffn = 0
    heads_before = heads_after = ffn_before = ffn_after = 0
    for layer in encoder.layers:
        if layer.attention is not None and layer.attention.heads > 1:
            kept = _prune_heads(module, layer.attention, config.ratio, ctx.edits)
            heads += 1
            heads_before += layer.attention.heads
            heads_after += kept
        if layer.ffn is not None:
            width, kept = _prune_ffn(module, layer.ffn, config.ratio, ctx.edits)
            ffn += 1
            ffn_before += width
            ffn_after += kept
    parts = []
    if heads:
        parts.append(f"the attention heads of {heads} layer(s) ({heads_before} -> {heads_after})")
    if ffn:
        parts.append(f"the feed-forward neurons of {ffn} layer(s) ({ffn_before} -> {ffn_after})")
    if not parts:
        raise NotApplicable("prune-structured found no attention heads or feed-forward blocks it can prune")
    return " and ".join(parts)


def _slice_linear(root: Any, path: str, dim: int, index: list[int], edits: list[Any]) -> None:
    """Slice a Linear along its output (dim 0) or input (dim 1) features, keeping its attributes true."""
    from engine.optimizations import surgery

    linear = root.get_submodule(path)
    edits.append(surgery.slice_tensor(root, f"{path}.weight", dim, index))
    if dim == 0 and linear.bias is not None:
        edits.append(surgery.slice_tensor(root, f"{path}.bias", 0, index))
    edits.append(surgery.set_attr(root, f"{path}.{'out_features' if dim == 0 else 'in_features'}", len(index)))


def _prune_heads(root: Any, attention: Any, ratio: float, edits: list[Any]) -> int:
    from engine.optimizations import surgery

    heads, size = attention.heads, attention.head_size
    kept = max(1, round(heads * (1 - ratio)))
    if kept == heads:
        return heads
    norms = surgery.slice_norms
    score = sum(norms(root.get_submodule(p).weight, 0, heads) for p in (attention.q, attention.k, attention.v))
    score = score + norms(root.get_submodule(attention.out).weight, 1, heads)
    keep = surgery.top_indices(score, kept)
    index = [h * size + j for h in keep for j in range(size)]
    for path in (attention.q, attention.k, attention.v):
        _slice_linear(root, path, 0, index, edits)
    _slice_linear(root, attention.out, 1, index, edits)
    edits.append(surgery.set_attr(root, f"{attention.path}.{attention.heads_attr}", kept))
    if attention.all_head_attr:
        edits.append(surgery.set_attr(root, f"{attention.path}.{attention.all_head_attr}", kept * size))
    return kept


def _prune_ffn(root: Any, ffn: tuple[str, str], ratio: float, edits: list[Any]) -> tuple[int, int]:
    from engine.optimizations import surgery

    first, second = ffn
    width = root.get_submodule(first).out_features
    kept = max(1, round(width * (1 - ratio)))
    if kept == width:
        return width, width
    score = (surgery.slice_norms(root.get_submodule(first).weight, 0, width)
             + surgery.slice_norms(root.get_submodule(second).weight, 1, width))
    keep = surgery.top_indices(score, kept)
    _slice_linear(root, first, 0, keep, edits)
    _slice_linear(root, second, 1, keep, edits)
    return width, kept
