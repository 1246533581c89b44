"""What makes a stored Hugging Face model generative, read at intake: a `*ForCausalLM` head that transformers
ships (never a model's own code) and, for prompts, its tokenizer files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.generation.settings import TASK

# The tokenizer files transformers reads without running code (tokenizer.json is the fast tokenizer's whole state;
# vocab.json + merges.txt is GPT-2's byte-level BPE); a sentencepiece .model needs the sentencepiece package.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


def check_no_remote_code(config: dict[str, Any], folder: Path, label: str) -> None:
    """Refuse, in one line, a model whose architecture only its own Python code defines (config.json's auto_map
    for a model_type transformers does not ship): Paretoscope never runs it (trust_remote_code stays off)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    custom = config.get("auto_map") or any(folder.glob("*.py"))
    if custom and (not isinstance(model_type, str) or model_type not in CONFIG_MAPPING):
        raise UserError(f"{label}: the model's architecture ({model_type or 'no model_type'}) is defined by its own "
                        "Python code (auto_map / *.py), which Paretoscope never runs (trust_remote_code is off); "
                        "upload a model whose architecture transformers ships, e.g. Llama, Mistral, Qwen2 or GPT-2")


def generation_info(config: dict[str, Any], model: Any, folder: Path) -> dict[str, Any]:
    """The intake record's additions for a decoder-only model (empty for any other): its task and whether its
    folder brings a tokenizer for the prompts."""
    from engine.optimizations.decoders import is_causal_lm

    if not is_causal_lm(model):  # *ForCausalLM, and GPT-2's GPT2LMHeadModel
        return {}
    return {"task": TASK, "tokenizer": any((folder / name).is_file() for name in TOKENIZER_FILES),
            "eos_token_id": config.get("eos_token_id")}
