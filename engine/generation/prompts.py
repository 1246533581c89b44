"""Token ids for prompts and evaluation: the bundled texts through the model's own tokenizer.

Prompts are real text cut to the cell's prompt length (ids inside the vocabulary, attention mask of ones). A folder
without tokenizer files gets ids from the range intake judged ordinary, and the result says so.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError

PROMPT_TEXT = "prompts.txt"
EVAL_TEXT = "eval.txt"
# distilling a decoder trains on windows of at most this many tokens of the prompt text
TRAIN_WINDOW = 128
# tokenizers and transformers read local files only, here as everywhere in the engine
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def bundled_text(name: str) -> str:
    return resources.files("engine.generation").joinpath("data", name).read_text(encoding="utf-8")


def load_tokenizer(folder: Path) -> Any | None:
    """The folder's tokenizer (local files only, never its code), or None when it has none that loads."""
    from engine.generation.intake import TOKENIZER_FILES

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, ImportError):  # ImportError: sentencepiece missing
        return None


class TokenSource:
    """The ids of a bundled text in the model's vocabulary, repeated as often as a request needs."""

    def __init__(self, tokenizer: Any | None, vocab_size: int, ordinary: tuple[int, int], text: str) -> None:
        self.tokenized = tokenizer is not None
        if tokenizer is not None:
            ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                raise UserError(f"the model's tokenizer makes id {int(ids.max())}, outside its vocabulary of "
                                f"{vocab_size} (config.json's vocab_size); save the model and tokenizer together")
        else:
            low, high = ordinary
            ids = np.random.default_rng(0).integers(low, high, size=4096, dtype=np.int64)
        if ids.size == 0:
            raise UserError("the model's tokenizer makes no tokens of the bundled text")
        self.ids = ids

    def take(self, count: int, offset: int = 0) -> np.ndarray:
        reps = (offset + count) // self.ids.size + 1
        return np.tile(self.ids, reps)[offset:offset + count]

    def batch(self, rows: int, length: int) -> np.ndarray:
        """`rows` sequences of `length` ids, each starting further into the text (rows differ, like real prompts)."""
        stride = max(1, min(length, self.ids.size // max(rows, 1)))
        return np.stack([self.take(length, (i * stride) % self.ids.size) for i in range(rows)])

    @property
    def note(self) -> str:
        return ("prompts: the bundled text through the model's tokenizer" if self.tokenized else
                "prompts: random ids of the ordinary vocabulary range (the folder has no tokenizer files)")


def training_windows(folder: Path, names: list[str], length: int, count: int) -> dict[str, np.ndarray] | None:
    """`count` windows of `length` tokens (at most TRAIN_WINDOW) of the bundled prompt text through the folder's
    tokenizer, as the inputs `names` (input_ids; attention_mask of ones; token_type_ids of zeros where the model has
    a token-type table): a decoder's distillation data. Never the evaluation text, which measures the result.
    None when the folder has no tokenizer that loads, or the model takes other inputs."""
    import json

    if not set(names) <= {"input_ids", "attention_mask", "token_type_ids"} or "input_ids" not in names:
        return None
    tokenizer = load_tokenizer(folder)
    if tokenizer is None:
        return None
    vocab = int(json.loads((folder / "config.json").read_text())["vocab_size"])
    source = TokenSource(tokenizer, vocab, (0, vocab), bundled_text(PROMPT_TEXT))
    ids = source.batch(count, max(2, min(length, TRAIN_WINDOW)))
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {name: arrays[name] for name in names}
