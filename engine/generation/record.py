"""What every generation cell records, whichever engine generated: its fidelity beside the reference's, and the
CellResult fields the token clock's timings decide (generation/cell.py on torch, ort_genai.py on ONNX Runtime)."""

from __future__ import annotations

from typing import Any

from engine.generation.settings import GenerationSettings
from engine.measure.generation import Timed
from engine.plan import Cell
from engine.results import CellResult, Fidelity, LatencySummary, Status


def fidelity_fields(perplexity: float, reference: dict[str, Any], agreement: float) -> dict[str, Any]:
    """The record's perplexity (none when the reference has none: random ids, no tokenizer), the reference's, the
    increase over it, and the next-token agreement."""
    known = reference["perplexity"] is not None
    return {"perplexity": perplexity if known else None, "reference_perplexity": reference["perplexity"],
            "perplexity_increase": perplexity / reference["perplexity"] - 1.0 if known else None,
            "next_token_agreement": agreement}


def generation_result(cell: Cell, gen: GenerationSettings, timings: list[Timed], record: dict[str, Any],
                      **fields: Any) -> CellResult:
    """The cell's result: the e2e percentiles as its latency, generated tokens per second end to end (prefill
    included) as its throughput, the agreement as its fidelity, and the record as the results JSON's `generation`
    (CellResult keeps keys it has no field for in `extra`); `fields` are the engine's own (load, memory, notes...)."""
    e2e = record["e2e_ms"]
    return CellResult(
        cell=cell.index, variant=cell.variant, runtime=cell.runtime, batch_size=cell.batch_size, status=Status.OK,
        latency_ms=LatencySummary(p50=e2e["p50"], p90=e2e["p90"], p99=e2e["p99"], mean=e2e["mean"],
                                  iterations=len(timings)),
        throughput_per_s=cell.batch_size * gen.new_tokens / (e2e["p50"] / 1e3) if e2e["p50"] else None,
        first_run_ms=None, fidelity=Fidelity(top1_agreement=record["next_token_agreement"]),
        samples_ms=[t.e2e_ms for t in timings], extra={"generation": record}, **fields)
