"""The generation scenario's settings (prompt lengths, new tokens, timed generations) and its cells.

Standard library only: the plan, the study service and the pages import it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import UserError

SCENARIO = "generate"
LATENCY = "latency"
SCENARIOS = (LATENCY, SCENARIO)
TASK = "text-generation"
DEFAULT_PROMPT_LENS = (32, 256)
DEFAULT_NEW_TOKENS = 64
DEFAULT_GENERATIONS = 10
DEFAULT_WARMUP = 2
# Variants of a generation study when none are named: what runs on a CPU, then what runs on a GPU (a row with
# its reason elsewhere): weight-only int8 runs on both (torchao), weight-only int4, bf16 and fp16 on CUDA.
DEFAULT_VARIANTS = ("baseline", "int8-dynamic", "int8-weight-only", "int4-weight-only", "bf16", "fp16")
# Runtimes that generate: transformers' generate() on an eager torch module. Other runtimes are rows saying why.
GENERATING_RUNTIMES = ("torch", "torch-cuda")
MAX_NEW_TOKENS = 4096


def parse_prompt_lens(text: str) -> tuple[int, ...]:
    try:
        lens = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError as exc:
        raise UserError(f"--prompt-lens '{text}' must be integers separated by commas, e.g. 32,256") from exc
    if not lens or lens[0] < 1:
        raise UserError(f"--prompt-lens '{text}' must be positive integers, e.g. 32,256")
    return tuple(lens)


@dataclass(frozen=True)
class GenerationSettings:
    """How each generation cell is measured: greedy decoding of exactly `new_tokens` tokens after a prompt of the
    cell's length, `warmup` untimed then `generations` timed generations."""

    prompt_lens: tuple[int, ...] = DEFAULT_PROMPT_LENS
    new_tokens: int = DEFAULT_NEW_TOKENS
    generations: int = DEFAULT_GENERATIONS
    warmup: int = DEFAULT_WARMUP
    # the prompt length of each cell, by cell index (filled by the plan: the queue stores cells without it)
    cell_prompt_lens: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prompt_lens or min(self.prompt_lens) < 1:
            raise UserError(f"--prompt-lens must be positive integers, got {list(self.prompt_lens)}")
        if not 2 <= self.new_tokens <= MAX_NEW_TOKENS:
            # time per output token needs a second token after the first
            raise UserError(f"--new-tokens must be from 2 to {MAX_NEW_TOKENS}, got {self.new_tokens}")
        if self.generations < 1:
            raise UserError(f"--generations must be at least 1, got {self.generations}")
        if self.warmup < 0:
            raise UserError(f"generation warm-up must be 0 or more, got {self.warmup}")

    def prompt_len_of(self, cell: int) -> int:
        if cell not in self.cell_prompt_lens:
            raise UserError(f"cell {cell} has no prompt length in the study's generation settings")
        return self.cell_prompt_lens[cell]

    def to_json(self) -> dict[str, Any]:
        return {"prompt_lens": list(self.prompt_lens), "new_tokens": self.new_tokens,
                "generations": self.generations, "warmup": self.warmup,
                "cell_prompt_lens": {str(k): v for k, v in self.cell_prompt_lens.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> GenerationSettings | None:
        if not data:
            return None
        return cls(prompt_lens=tuple(int(x) for x in data["prompt_lens"]), new_tokens=int(data["new_tokens"]),
                   generations=int(data["generations"]), warmup=int(data["warmup"]),
                   cell_prompt_lens={int(k): int(v) for k, v in (data.get("cell_prompt_lens") or {}).items()})


def is_generative(info: dict[str, Any] | None) -> bool:
    """Whether a stored model's intake record says it generates text."""
    return bool(info) and (info or {}).get("task") == TASK


def kv_cache_bytes_per_token(config: dict[str, Any], dtype_bytes: int) -> int | None:
    """Bytes the KV cache grows by per token of one sequence: 2 (keys, values) × layers × kv heads × head dim ×
    the dtype's bytes; None when the config does not say its sizes."""
    def first(*keys: str) -> int | None:
        for key in keys:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    layers = first("num_hidden_layers", "n_layer", "num_layers")
    heads = first("num_attention_heads", "n_head")
    hidden = first("hidden_size", "n_embd")
    if layers is None or heads is None or hidden is None:
        return None
    kv_heads = first("num_key_value_heads") or heads
    head_dim = first("head_dim") or hidden // heads
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def generation_settings(scenario: str, prompt_lens: str, new_tokens: int,
                        generations: int) -> GenerationSettings | None:
    """The scenario's settings from a front end's values (None for the latency scenario)."""
    if scenario not in SCENARIOS:
        raise UserError(f"--scenario '{scenario}' is not one of {', '.join(SCENARIOS)}")
    if scenario != SCENARIO:
        return None
    return GenerationSettings(prompt_lens=parse_prompt_lens(prompt_lens), new_tokens=int(new_tokens),
                              generations=int(generations))
