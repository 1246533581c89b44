"""Structural edits of torch modules, recorded as JSON so that a built variant can be rebuilt from its original.

A torch-level pass that changes a model's shape (pruning channels, heads or layers) applies its changes through
these edits and records them. The build cache stores the edits and the final weights (safetensors), and
rebuilds the variant by replaying the edits on a fresh copy of the original model, then loading the weights:
no pickles, and the variant stays the same kind of module as the original (an exported graph, a transformers
model). Imports torch: the passes and the build import this module lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

Edit = dict[str, Any]


def _owner(root: Any, target: str) -> tuple[Any, str]:
    """The object holding the last part of a dotted path, and that part's name."""
    *parents, name = target.split(".")
    owner = root
    for part in parents:
        owner = getattr(owner, part)
    return owner, name


def get(root: Any, target: str) -> Any:
    owner, name = _owner(root, target)
    return getattr(owner, name)


def slice_tensor(root: nn.Module, target: str, dim: int, keep: list[int]) -> Edit:
    """Keep the entries `keep` of a parameter, buffer or tensor attribute along `dim`."""
    owner, name = _owner(root, target)
    old = getattr(owner, name)
    index = torch.tensor(keep, dtype=torch.long, device=old.device)
    new = old.detach().index_select(dim, index).clone()
    if isinstance(old, nn.Parameter):
        setattr(owner, name, nn.Parameter(new, requires_grad=old.requires_grad))
    elif isinstance(owner, nn.Module) and name in owner._buffers:
        owner._buffers[name] = new  # keeps the buffer's persistence as it was
    else:
        setattr(owner, name, new)
    return {"kind": "slice", "target": target, "dim": dim, "keep": list(keep)}


def set_attr(root: Any, target: str, value: Any) -> Edit:
    """Set a plain attribute (a layer's feature count, an attention module's head count, a config field)."""
    owner, name = _owner(root, target)
    setattr(owner, name, value)
    return {"kind": "set_attr", "target": target, "value": value}


def set_node_arg(graph_module: torch.fx.GraphModule, node_name: str, index: int, item: int | None,
                 value: Any) -> Edit:
    """Replace argument `index` (or item `item` of that list argument) of a graph node, e.g. a baked shape."""
    node = next((n for n in graph_module.graph.nodes if n.name == node_name), None)
    if node is None:
        raise KeyError(f"graph node {node_name} not found")
    args = list(node.args)
    if item is None:
        args[index] = value
    else:
        items = list(args[index])
        items[item] = value
        args[index] = items
    node.args = tuple(args)
    graph_module.recompile()
    return {"kind": "node_arg", "node": node_name, "index": index, "item": item, "value": value}


def keep_layers(root: nn.Module, target: str, keep: list[int]) -> Edit:
    """Keep the modules `keep` of a ModuleList (a transformer's layers), in order."""
    owner, name = _owner(root, target)
    layers = getattr(owner, name)
    setattr(owner, name, nn.ModuleList([layers[i] for i in keep]))
    return {"kind": "keep_layers", "target": target, "keep": list(keep)}


def apply(root: nn.Module, edits: list[Edit]) -> None:
    """Replay recorded edits, in order, on a fresh copy of the original model."""
    for edit in edits:
        kind = edit["kind"]
        if kind == "slice":
            slice_tensor(root, edit["target"], edit["dim"], edit["keep"])
        elif kind == "set_attr":
            set_attr(root, edit["target"], edit["value"])
        elif kind == "node_arg":
            if not isinstance(root, torch.fx.GraphModule):
                raise TypeError("a node_arg edit needs a graph module")
            set_node_arg(root, edit["node"], edit["index"], edit["item"], edit["value"])
        elif kind == "keep_layers":
            keep_layers(root, edit["target"], edit["keep"])
        else:
            raise ValueError(f"unknown structural edit '{kind}'")


def slice_norms(weight: Any, dim: int, groups: int) -> Any:
    """L2 norm of each of `groups` equal slices of `weight` along `dim`, scaled to mean 1 (so that every
    weight tensor scoring the same channels weighs equally, whatever its scale)."""
    rows = weight.detach().double().movedim(dim, 0).reshape(groups, -1)
    norms = rows.norm(dim=1)
    return norms / (norms.mean() + 1e-12)


def top_indices(score: Any, count: int) -> list[int]:
    """The `count` best-scoring indices, in ascending order (ties kept stable)."""
    return sorted(int(i) for i in torch.argsort(score, descending=True, stable=True)[:count])


def save_weights(module: nn.Module, path: Path) -> None:
    """Every parameter and persistent buffer as safetensors (tied weights stored once)."""
    from safetensors.torch import save_model

    save_model(module, str(path))


def load_weights(module: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    missing, unexpected = load_model(module, str(path), strict=True)
    if missing or unexpected:  # strict=True raises already; kept for older safetensors
        raise RuntimeError(f"cached weights do not fit the rebuilt model (missing {missing}, unexpected {unexpected})")
