"""Where a Hugging Face decoder-only model keeps its layers, and what numbers its KV cache by layer.

Layer distillation keeps some of a decoder's layers; transformers' KV cache (DynamicCache) holds one entry per
layer, sized from the config (num_hidden_layers, layer_types) and indexed by each attention module's `layer_idx`.
The layer list is matched by the names transformers uses (`model.layers`: Llama, Mistral, Qwen2 and models built
like them; `transformer.h`: GPT-2); anything else is reported in one line, never guessed. Importing it is light
(the plan asks `plan_reason`, which reads the saved weights' names); finding and editing import torch.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import NotApplicable

if TYPE_CHECKING:
    from torch import nn

# layer lists relative to the causal LM, by the attribute names transformers gives them
LAYER_LISTS = ("model.layers", "transformer.h")
# decoders transformers names otherwise than *ForCausalLM
LM_HEADS = frozenset({"GPT2LMHeadModel"})
# attributes a layer or its attention module holds its own index in (renumbered when layers are dropped)
INDEX_ATTR = "layer_idx"
# config fields with one entry per layer that a decoder with fewer layers keeps the kept entries of
PER_LAYER_FIELDS = ("layer_types",)
# per-layer config fields the pass does not cut (KV sharing between layers, per-layer MLP kinds, layers without
# RoPE): a model that sets them is refused rather than left with a config that no longer matches its layers
UNCUT_PER_LAYER_FIELDS = ("mlp_layer_types", "kv_sharing_modes", "no_rope_layers", "num_kv_shared_layers")
# the layer lists in the saved weights' names, with the attention module holding the layer index (GPT-2
# checkpoints are saved with or without "transformer.")
_WEIGHT_NAMES = re.compile(r"(^|\.)(model\.layers\.\d+\.self_attn|h\.\d+\.attn)\.")
# a safetensors header larger than this is not read by the plan (the build reports what it finds instead)
_MAX_HEADER = 8 * 2**20


@dataclass(frozen=True)
class Decoder:
    layers_path: str  # relative to the root passed to find_decoder (an HFWrapper: "model.model.layers")
    count: int
    config_path: str  # the causal LM's config, relative to the root
    # per layer: paths (relative to the root) of the modules holding INDEX_ATTR
    indexed: tuple[tuple[str, ...], ...]
    per_layer_fields: tuple[str, ...]  # of PER_LAYER_FIELDS, those the config has as a list


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def is_causal_lm(model: Any) -> bool:
    """A transformers decoder with a causal language-modelling head: *ForCausalLM (Llama, Mistral, Qwen2, ...) or
    GPT-2's GPT2LMHeadModel (not the masked, multimodal or encoder heads transformers also maps to causal LM)."""
    name = type(model).__name__
    return name.endswith("ForCausalLM") or name in LM_HEADS


def plan_reason(folder: Path) -> str | None:
    """Why distill:layers cannot keep layers of the decoder saved in `folder`, read from its weights' names without
    loading it; None when a known layer list is there (or the names cannot be read: the build decides)."""
    names = _weight_names(folder)
    if names is None or any(_WEIGHT_NAMES.search(n) for n in names):
        return None
    return ("distill:layers finds a decoder's layers by the names transformers uses (model.layers.N.self_attn, "
            "transformer.h.N.attn); this model's weights have neither")


def _weight_names(folder: Path) -> list[str] | None:
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            return list(json.loads(index.read_text())["weight_map"])
        names: list[str] = []
        files = sorted(folder.glob("*.safetensors"))
        for path in files:
            with path.open("rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                if size > _MAX_HEADER:
                    return None
                names.extend(k for k in json.loads(f.read(size)) if k != "__metadata__")
        return names if files else None
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def find_decoder(root: nn.Module) -> Decoder:
    """The layout of the decoder-only transformers model inside `root` (an HFWrapper holding it as `.model`);
    raises NotApplicable in one line when the layer list or the layer indices are not where transformers puts
    them."""
    from torch import nn

    lm = getattr(root, "model", None)
    name = type(lm).__name__
    if not isinstance(lm, nn.Module) or not is_causal_lm(lm):
        raise NotApplicable(f"distill:layers on a decoder needs a transformers causal LM; this model is {name}")
    config = getattr(lm, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        raise NotApplicable(f"distill:layers keeps layers of decoder-only models; {name} is an encoder-decoder")
    if getattr(config, "is_heterogeneous", False):
        raise NotApplicable(f"distill:layers cannot keep layers of {name}: its config sets layers apart "
                            "(per_layer_config)")
    found = [(path, m) for path in LAYER_LISTS if isinstance(m := _get(lm, path), nn.ModuleList)]
    if not found:
        raise NotApplicable(f"distill:layers found no decoder layer list in {name} (looked for "
                            f"{' and '.join(LAYER_LISTS)}, the names transformers uses)")
    path, layers = found[0]
    total = int(getattr(config, "num_hidden_layers", -1))
    if len(layers) != total:
        raise NotApplicable(f"distill:layers: {name}.{path} holds {len(layers)} layers but its config says "
                            f"num_hidden_layers={total}")
    layers_path = _join("model", path)
    indexed = []
    for i, layer in enumerate(layers):
        holders = tuple(_join(layers_path, str(i), sub) for sub, m in layer.named_modules()
                        if isinstance(getattr(m, INDEX_ATTR, None), int))
        if not holders:
            raise NotApplicable(f"distill:layers found no {INDEX_ATTR} in layer {i} of {name}: the KV cache's layer "
                                "indices could not be renumbered")
        indexed.append(holders)
    uncut = [f for f in UNCUT_PER_LAYER_FIELDS if getattr(config, f, None)]
    if uncut:
        raise NotApplicable(f"distill:layers cannot keep layers of {name}: its config sets {', '.join(uncut)} per "
                            "layer, which the pass does not cut")
    fields = tuple(f for f in PER_LAYER_FIELDS if isinstance(getattr(config, f, None), (list, tuple)))
    for f in fields:
        if len(getattr(config, f)) != total:
            raise NotApplicable(f"distill:layers: {name}'s config.{f} has {len(getattr(config, f))} entries for "
                                f"{total} layers")
    return Decoder(layers_path, total, "model.config", tuple(indexed), fields)


def _get(root: nn.Module, path: str) -> Any:
    from torch import nn

    if not isinstance(root, nn.Module):
        return None
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def keep_layers(root: nn.Module, decoder: Decoder, keep: list[int]) -> list[dict[str, Any]]:
    """Keep the layers `keep` (in order) and make the model say so: each kept layer's indices renumbered 0..K-1,
    the config's layer count and per-layer fields cut to match, so that the KV cache holds K layers. Returns the
    structural edits (engine.optimizations.surgery), which replay the same changes on a fresh original."""
    from engine.optimizations import surgery

    config = surgery.get(root, decoder.config_path)
    edits = [surgery.keep_layers(root, decoder.layers_path, keep)]
    for new, old in enumerate(keep):
        old_prefix = _join(decoder.layers_path, str(old))
        for holder in decoder.indexed[old]:
            moved = _join(decoder.layers_path, str(new), holder[len(old_prefix) + 1:])
            edits.append(surgery.set_attr(root, _join(moved, INDEX_ATTR), new))
    for f in decoder.per_layer_fields:
        values = list(getattr(config, f))
        edits.append(surgery.set_attr(root, _join(decoder.config_path, f), [values[i] for i in keep]))
    # set through the config's attribute map: GPT-2 keeps the count as n_layer
    edits.append(surgery.set_attr(root, _join(decoder.config_path, "num_hidden_layers"), len(keep)))
    return edits
