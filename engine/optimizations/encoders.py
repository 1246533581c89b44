"""Where a Hugging Face encoder keeps its layers, attention projections and feed-forward blocks.

Structured pruning (heads, FFN width) and layer distillation edit these by name. Layouts are matched by the
projection names transformers uses (BERT, RoBERTa, ELECTRA, XLM-R, DistilBERT, and models named like them);
anything else is reported, never guessed. Imports torch: imported lazily by the passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# (query, key, value) projection names, each set found as children of one attention module
_QKV = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))
# the output projection, relative to the attention module ("^" = its parent)
_OUT = ("out_lin", "out_proj", "o_proj", "^output.dense")
# head-count attributes on the attention module, and the per-head width
_HEADS = ("num_attention_heads", "n_heads", "num_heads")
_HEAD_SIZE = ("attention_head_size", "head_dim")
# attributes that hold heads x head width (not `dim`/`embed_dim`, which some models use for the hidden size)
_ALL_HEAD = ("all_head_size", "inner_dim")
# feed-forward (expand, contract) pairs, relative to the layer
_FFN = (("intermediate.dense", "output.dense"), ("ffn.lin1", "ffn.lin2"), ("mlp.fc1", "mlp.fc2"), ("fc1", "fc2"))


@dataclass(frozen=True)
class Attention:
    path: str  # the module holding the head count
    q: str
    k: str
    v: str
    out: str
    heads: int
    head_size: int
    heads_attr: str
    all_head_attr: str | None


@dataclass(frozen=True)
class Layer:
    path: str
    attention: Attention | None
    ffn: tuple[str, str] | None


@dataclass(frozen=True)
class Encoder:
    layers_path: str
    layers: tuple[Layer, ...]
    config_path: str | None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _linear(root: nn.Module, path: str) -> nn.Linear | None:
    try:
        module = root.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Linear) else None


def _layer_list(root: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The encoder's layer list: the largest ModuleList of identical blocks that hold attention."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in root.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        if _find_attention(root, _join(name, "0")) is None:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    return (best[1], best[2]) if best else None


def _find_attention(root: nn.Module, layer_path: str) -> Attention | None:
    layer = root.get_submodule(layer_path)
    for name, module in layer.named_modules():
        for names in _QKV:
            projections = [_linear(module, n) for n in names]
            if not all(projections):
                continue
            path = _join(layer_path, name)
            q, k, v = (_join(path, n) for n in names)
            out = None
            for candidate in _OUT:
                base = path.rpartition(".")[0] if candidate.startswith("^") else path
                full = _join(base, candidate.lstrip("^"))
                if _linear(root, full) is not None:
                    out = full
                    break
            heads_attr = next((a for a in _HEADS if isinstance(getattr(module, a, None), int)), None)
            size_attr = next((a for a in _HEAD_SIZE if isinstance(getattr(module, a, None), int)), None)
            if out is None or heads_attr is None:
                return None
            heads = int(getattr(module, heads_attr))
            width = projections[0].out_features  # type: ignore[union-attr]
            head_size = int(getattr(module, size_attr)) if size_attr else width // heads
            if heads * head_size != width or any(p.out_features != width for p in projections):  # type: ignore[union-attr]
                return None  # grouped-query attention or an unusual layout: heads are left alone
            all_head = next((a for a in _ALL_HEAD if getattr(module, a, None) == width), None)
            return Attention(path, q, k, v, out, heads, head_size, heads_attr, all_head)
    return None


def _find_ffn(root: nn.Module, layer_path: str) -> tuple[str, str] | None:
    for first, second in _FFN:
        a, b = _linear(root, _join(layer_path, first)), _linear(root, _join(layer_path, second))
        if a is not None and b is not None and a.out_features == b.in_features:
            return _join(layer_path, first), _join(layer_path, second)
    return None


def find_encoder(root: nn.Module) -> Encoder | None:
    """The layout of a transformers encoder inside `root` (an HFWrapper), or None when it is not one."""
    found = _layer_list(root)
    if found is None:
        return None
    path, layers = found
    described = tuple(
        Layer(_join(path, str(i)), _find_attention(root, _join(path, str(i))), _find_ffn(root, _join(path, str(i))))
        for i in range(len(layers))
    )
    config_path = next((name + ".config" if name else "config" for name, m in root.named_modules()
                        if hasattr(m, "config") and hasattr(m.config, "num_hidden_layers")), None)
    return Encoder(path, described, config_path)
