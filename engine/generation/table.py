"""The generation table the CLI prints after a generation study: one line per measured cell."""

from __future__ import annotations

from typing import Any

from engine.results import CellResult

_COLUMNS = (("#", 3), ("variant", 22), ("runtime", 10), ("batch", 5), ("prompt", 6), ("TTFT p50 ms", 11),
            ("TPOT p50 ms", 11), ("ITL p99 ms", 10), ("prefill tok/s", 13), ("decode tok/s", 12), ("ppl", 8),
            ("ppl fp32", 8), ("agree", 6))


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def generation_lines(rows: list[CellResult], settings: dict[str, Any] | None = None) -> list[str]:
    """A header and a line per cell that generated: TTFT, TPOT, ITL, tokens/s, perplexity beside fp32's."""
    lines = ["generation (greedy, EOS ignored; TTFT = prompt + first token, TPOT = per token after it):",
             "  ".join(f"{name:<{width}}" for name, width in _COLUMNS)]
    for row in rows:
        g = row.extra.get("generation")
        if not g:
            continue
        values = (str(row.cell), row.variant, row.runtime, str(row.batch_size), str(g.get("prompt_len")),
                  _num(g["ttft_ms"]["p50"], ".2f"), _num(g["tpot_ms"]["p50"], ".3f"), _num(g["itl_ms"]["p99"], ".3f"),
                  _num(g.get("prefill_tokens_per_s"), ".0f"), _num(g.get("decode_tokens_per_s"), ".1f"),
                  _num(g.get("perplexity"), ".2f"), _num(g.get("reference_perplexity"), ".2f"),
                  _num(g.get("next_token_agreement"), ".3f"))
        lines.append("  ".join(f"{v:<{w}}" for v, (_, w) in zip(values, _COLUMNS, strict=True)))
    new_tokens = ((settings or {}).get("generation") or {}).get("new_tokens")
    if new_tokens:
        lines.append(f"each generation made exactly {new_tokens} new tokens")
    return lines
