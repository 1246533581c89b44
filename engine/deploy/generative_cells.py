"""Which generation cells the generative bundle serves, and one-line refusals naming a cell to pick for the others.

The bundle holds the uploaded fp32 Hugging Face folder and rebuilds the variant from it at load time: baseline, a
dtype (fp16, bf16) or an int8 quantization. Variants whose weights differ from the folder's (pruning, distillation),
that only a CUDA build makes (int4) or that generate on another runtime are refused.
"""

from __future__ import annotations

from typing import Any

from engine.errors import UserError
from engine.generation.settings import GENERATING_RUNTIMES, SCENARIO
from engine.results import CellResult, Status

# the chains the server rebuilds from the fp32 folder: the step id and the dtype it loads the weights in
DTYPES = {"": "float32", "int8-dynamic": "float32", "int8-weight-only": "float32", "fp16": "float16",
          "bf16": "bfloat16"}


def is_generation_cell(cell: CellResult) -> bool:
    """Whether a cell belongs to the generation scenario (its result has `generation`, or its settings say so)."""
    return bool(cell.extra.get("generation")) or (cell.settings or {}).get("scenario") == SCENARIO


def is_generation_study(report: dict[str, Any]) -> bool:
    settings = report["study"].get("settings") or {}
    return bool(settings.get("generation")) or any(
        is_generation_cell(CellResult.from_json(row)) for row in report["results"])


def unservable_reason(cell: CellResult) -> str | None:
    """Why the generative bundle cannot serve this cell's variant (None: it can)."""
    from engine.optimizations import parse_chain

    steps = parse_chain(cell.variant).steps
    if len(steps) > 1 or (steps and steps[0].id not in DTYPES):
        return (f"the generative bundle rebuilds baseline, {', '.join(k for k in DTYPES if k)} from the model's "
                f"folder; {cell.variant} changes the weights in ways the folder does not hold")
    return None


def servable(cell: CellResult) -> bool:
    return (is_generation_cell(cell) and cell.status == Status.OK and cell.runtime in GENERATING_RUNTIMES
            and unservable_reason(cell) is None)


def _instead(cells: list[CellResult], like: CellResult) -> str:
    """`deploy cell N instead (...): --cell N`, the measured servable cell nearest to `like`."""
    options = sorted((c for c in cells if servable(c)),
                     key=lambda c: (c.variant != "baseline", c.variant != like.variant, c.batch_size,
                                    c.cell if c.cell is not None else 0))
    if not options:
        return "run the study with --runtimes torch (and a baseline variant), then deploy that cell"
    c = options[0]
    return f"deploy cell {c.cell} instead ({c.variant} on {c.runtime}, batch {c.batch_size}): --cell {c.cell}"


def check_servable(cells: list[CellResult], cell: CellResult, label: str) -> None:
    """UserError in one line, naming a cell to pick, when the generative bundle cannot serve this cell."""
    if cell.runtime not in GENERATING_RUNTIMES:
        raise UserError(f"{label} generates on {cell.runtime}; the generative bundle serves transformers' "
                        f"generate() on {' or '.join(GENERATING_RUNTIMES)}: {_instead(cells, cell)}")
    reason = unservable_reason(cell)
    if reason is not None:
        raise UserError(f"{label}: {reason}; {_instead(cells, cell)}")


def recommended(report: dict[str, Any]) -> int | None:
    """A generation study's pick: the servable cell with the most decode tokens/s at the smallest batch whose
    next-token agreement with fp32 is at least 0.99 (the baseline's is 1)."""
    cells = [c for c in (CellResult.from_json(row) for row in report["results"]) if servable(c)]
    if not cells:
        return None
    smallest = min(c.batch_size for c in cells)

    def generation(c: CellResult) -> dict[str, Any]:
        value = c.extra.get("generation")
        return value if isinstance(value, dict) else {}

    good = [c for c in cells if c.batch_size == smallest
            and (generation(c).get("next_token_agreement") or 0.0) >= 0.99]
    if not good:
        return None
    return max(good, key=lambda c: generation(c).get("decode_tokens_per_s") or 0.0).cell
