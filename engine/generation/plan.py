"""A generation study's cells: variant × runtime × batch size × prompt length, each runnable or not and why."""

from __future__ import annotations

from dataclasses import replace

from engine.artifacts import Artifact
from engine.errors import UserError
from engine.generation import ort_genai
from engine.generation.settings import GENERATING_RUNTIMES, GenerationSettings, is_generative
from engine.optimizations.base import Chain
from engine.optimizations import decoders
from engine.optimizations.build import not_applicable_reason
from engine.optimizations.weight_only import missing_reason
from engine.plan import Cell
from engine.results import Status
from engine.runtimes import get as get_runtime

# Why a runtime that does not generate here is a row: the maintained path each would need, and its state.
_RUNTIME_REASONS = {
    # the CPU `onnxruntime` generates through onnxruntime-genai (ort_genai.py); its CUDA build is another package
    "onnxruntime": "generation on ONNX Runtime runs on its CPU provider, as the runtime onnxruntime, through "
                   "onnxruntime-genai; its CUDA build (onnxruntime-genai-cuda) is not installed",
    # optimum-intel 2.2.0 (2026-09, the newest) pins transformers<5.6; the project runs a newer transformers
    "openvino": "generation on OpenVINO needs optimum-intel's OVModelForCausalLM (its stateful KV-cache export), "
                "whose newest release (2.2.0) requires transformers<5.6: it cannot be installed beside this "
                "project's transformers",
}


def runtime_reason(runtime_id: str) -> str | None:
    """Why a runtime does not generate (None: it does, through transformers' generate())."""
    if runtime_id in GENERATING_RUNTIMES or runtime_id == ort_genai.RUNTIME:
        return None
    for prefix, reason in _RUNTIME_REASONS.items():
        if runtime_id.startswith(prefix):
            return reason
    return f"{runtime_id} has no generate() loop here; generation runs on {' and '.join(GENERATING_RUNTIMES)}"


def chain_reason(model: Artifact, chain: Chain, runtime_id: str) -> tuple[str, str] | None:
    """(status, reason) when the chain cannot generate on this runtime; None when it can."""
    if runtime_id == ort_genai.RUNTIME:
        return ort_genai.plan_reason(model, chain)
    runtime = get_runtime(runtime_id)
    for step in chain.steps:
        needs = step.opt.torch_devices
        if step.opt.stage == "format" and needs and runtime.device not in needs:
            # bf16/fp16 eager kernels want a GPU: this machine (or runtime) has none
            return Status.UNAVAILABLE, f"{step.id} generates on a {'/'.join(sorted(needs)).upper()} device (torch-cuda)"
        if step.id == "int8-dynamic" and runtime.device != "cpu":
            return Status.NOT_APPLICABLE, "int8-dynamic's quantized Linear layers run on the CPU only (torch)"
        if step.id in ("int8-weight-only", "int4-weight-only") and (why := missing_reason(step.id)):
            return Status.UNAVAILABLE, why
        if step.id == "distill" and int(getattr(step.config, "layers", 0) or 0) and (
                why := decoders.plan_reason(model.path)):
            return Status.NOT_APPLICABLE, why
        if step.opt.stage == "convert":
            return Status.NOT_APPLICABLE, f"{step.id} makes an ONNX file; generation runs the torch model"
    na = not_applicable_reason(model.format, chain, runtime.consumes, runtime.device)
    return (Status.NOT_APPLICABLE, na) if na else None


def expand(model: Artifact, chains: list[Chain], runtimes: list[str], batch_sizes: list[int],
           settings: GenerationSettings) -> tuple[list[Cell], GenerationSettings]:
    """The cells and the settings that record each runnable cell's prompt length. A variant that cannot run here
    is one row per runtime (at the smallest batch size) with its reason."""
    if not is_generative(model.info):
        raise UserError(f"{model.path.name}: --scenario generate needs a decoder-only Hugging Face model "
                        "(*ForCausalLM: Llama, Mistral, Qwen2, GPT-2); this model is not one")
    max_pos = model.info.get("max_position_embeddings")
    cells: list[Cell] = []
    prompt_lens: dict[int, int] = {}
    for chain in chains:
        for rid in runtimes:
            ok, why = get_runtime(rid).available()
            skip = ((Status.UNAVAILABLE, why or f"{rid} is unavailable") if not ok else
                    (Status.NOT_APPLICABLE, reason) if (reason := runtime_reason(rid)) else
                    chain_reason(model, chain, rid))
            if skip is not None:
                cells.append(Cell(len(cells), chain.name, tuple(chain.to_json()), rid, batch_sizes[0],
                                  str(skip[0]), skip[1]))
                continue
            for batch in batch_sizes:
                for length in settings.prompt_lens:
                    status, reason = "pending", None
                    if max_pos and length + settings.new_tokens > max_pos:
                        status, reason = str(Status.NOT_APPLICABLE), (
                            f"a prompt of {length} tokens and {settings.new_tokens} new ones exceed the model's "
                            f"max_position_embeddings ({max_pos})")
                    index = len(cells)
                    prompt_lens[index] = length
                    cells.append(Cell(index, chain.name, tuple(chain.to_json()), rid, batch, status, reason))
    return cells, replace(settings, cell_prompt_lens=prompt_lens)
