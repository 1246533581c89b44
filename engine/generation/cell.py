"""A generation cell and a generation study's reference, run in the cell's child process (engine/job.py hands a
study with generation settings here).

The reference is the uploaded model in fp32 on the CPU: its perplexity on the bundled evaluation text and its
argmax at every position, which each cell's agreement is measured against.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from engine.artifacts import Artifact
from engine.errors import UserError
from engine.executors.tasks import ProgressFn
from engine.generation import fidelity, ort_genai
from engine.generation.record import fidelity_fields, generation_result
from engine.generation.prompts import EVAL_TEXT, PROMPT_TEXT, TokenSource, bundled_text, load_tokenizer
from engine.generation.settings import kv_cache_bytes_per_token
from engine.measure import memory
from engine.measure import generation as timing
from engine.optimizations.base import Chain
from engine.plan import Cell, StudySettings
from engine.results import CellResult

REFERENCE_FILE = "generation-reference.json"


def _config(model: Artifact) -> dict[str, Any]:
    return dict(json.loads((model.path / "config.json").read_text()))


def _layer_config(model: Artifact, lm: Any) -> dict[str, Any]:
    """config.json with the variant's own layer count (distill:layers=K keeps K layers, and K caches)."""
    config = _config(model)
    for key in ("num_hidden_layers", "n_layer"):
        if key in config and isinstance(count := getattr(lm.config, key, None), int):
            config[key] = count
    return config


def _source(model: Artifact, text: str) -> TokenSource:
    config = _config(model)
    ids = next(t for t in model.spec.inputs if t.name == "input_ids")
    ordinary = ids.value_range or (0, int(config["vocab_size"]))
    return TokenSource(load_tokenizer(model.path), int(config["vocab_size"]), ordinary, text)


def causal_lm(module: Any) -> Any:
    """The transformers model inside a built variant (engine.modules.HFWrapper holds it as `model`)."""
    model = getattr(module, "model", module)
    if not hasattr(model, "generate"):
        raise UserError(f"{type(model).__name__} has no generate(); only *ForCausalLM models generate")
    return model


def load_generator(model: Artifact, chain: Chain, device: str = "cpu") -> tuple[Any, Any | None]:
    """A variant's model ready to generate and the folder's tokenizer (None without one): the hook the streaming
    server and serve-bench of generative cells start from."""
    from engine.optimizations.build import build_variant
    from engine.variants import BuildContext

    variant = build_variant(model, chain, "torch", BuildContext(model.spec, "cuda" if device != "cpu" else "cpu"))
    return causal_lm(variant.module).to(device), load_tokenizer(model.path)


def compute_reference(study_dir: Path, model: Artifact, settings: StudySettings,
                      progress: ProgressFn) -> dict[str, Any]:
    """fp32 perplexity and argmax on the evaluation windows, saved once for the study."""
    import torch

    from engine.modules import load_module

    progress("reference outputs", 0.0)
    torch.set_num_threads(settings.threads)
    lm = causal_lm(load_module(model.path, model.format, model.spec))
    source = _source(model, bundled_text(EVAL_TEXT))
    windows = fidelity.eval_windows(source, model.info.get("max_position_embeddings"))
    perplexity: float | None
    perplexity, argmax = fidelity.evaluate(lm, windows, "cpu")
    if not source.tokenized:  # the likelihood of random ids says nothing about the model: none, not a number
        perplexity = None
    study_dir.mkdir(parents=True, exist_ok=True)
    record = {"perplexity": perplexity, "argmax": argmax.tolist(), "windows": windows.tolist()}
    tmp = study_dir / f".{REFERENCE_FILE}.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(study_dir / REFERENCE_FILE)
    progress("reference outputs", 1.0)
    return {"runtime": "torch", "scenario": "generate", "perplexity": perplexity,
            "tokens": int(windows.shape[0] * (windows.shape[1] - 1))}


def run_cell(study_dir: Path, model: Artifact, cell: Cell, settings: StudySettings, data_path: str | None,
             progress: ProgressFn) -> CellResult:
    """Build the cell's variant, then warm up and time greedy generations of the cell's batch and prompt length,
    token by token; then its perplexity and next-token agreement against the reference."""
    import numpy as np
    import torch

    from engine.prepare import open_cell

    gen = settings.generation
    if gen is None:
        raise UserError("the study has no generation settings")
    if cell.runtime == ort_genai.RUNTIME:  # ONNX Runtime generates through onnxruntime-genai
        reference = json.loads((study_dir / REFERENCE_FILE).read_text())
        return ort_genai.run_cell(model, cell, settings, _source(model, bundled_text(PROMPT_TEXT)), reference,
                                  progress)
    prompt_len = gen.prompt_len_of(cell.index)
    torch.set_num_threads(settings.threads)
    opened = open_cell(model, cell, settings, data_path, progress)
    device = opened.gpu_device or "cpu"
    progress("loading", 0.0)
    t0 = time.perf_counter()
    lm = causal_lm(opened.variant.module).to(device)
    if device != "cpu":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    load_s = time.perf_counter() - t0

    prompts = _source(model, bundled_text(PROMPT_TEXT))
    ids = torch.from_numpy(prompts.batch(cell.batch_size, prompt_len)).to(device)
    mask = torch.ones_like(ids)
    pad = _pad_id(model)
    progress("warming up", 0.0)
    for i in range(gen.warmup):
        timing.timed_generation(lm, ids, mask, gen.new_tokens, pad, device)
        progress("warming up", (i + 1) / max(gen.warmup, 1))
    timings = []
    for i in range(gen.generations):
        timings.append(timing.timed_generation(lm, ids, mask, gen.new_tokens, pad, device))
        progress("measuring", (i + 1) / gen.generations)
    summary = timing.summarize(timings, cell.batch_size, prompt_len)
    peak_device_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device != "cpu" else None
    peak_host_mb = memory.peak_host_mb()

    progress("accuracy", 0.0)
    reference = json.loads((study_dir / REFERENCE_FILE).read_text())
    windows = np.asarray(reference["windows"], dtype=np.int64)
    perplexity, argmax = fidelity.evaluate(lm, windows, device)
    agree = fidelity.agreement(argmax, np.asarray(reference["argmax"]))
    dtype_bytes = _kv_dtype_bytes(lm)
    record = {
        **summary, "prompt_len": prompt_len, "new_tokens": gen.new_tokens,
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(_layer_config(model, lm), dtype_bytes),
        "kv_cache_dtype_bytes": dtype_bytes,
        **fidelity_fields(perplexity, reference, agree),
        "timer": "cuda-events" if device != "cpu" else "perf_counter (CUDA events unavailable: no CUDA device)",
    }
    notes = [prompts.note, *dict.fromkeys(opened.variant.notes)]
    if reference["perplexity"] is None:
        notes.append("no perplexity: the folder has no tokenizer, so the evaluation windows are random ids; the "
                     "next-token agreement compares the argmaxes on them")
    if opened.variant.cached:
        notes.append("variant taken from the build cache")
    return generation_result(
        cell, gen, timings, record, load_s=load_s, peak_host_mb=peak_host_mb, peak_device_mb=peak_device_mb,
        model_size_mb=opened.variant.size_bytes / 2**20,
        settings={"threads": settings.threads, "device": device, "scenario": "generate",
                  "prompt_len": prompt_len, "new_tokens": gen.new_tokens, "warmup": gen.warmup,
                  "generations": gen.generations, "decoding": "greedy, EOS ignored"},
        notes=notes, build_s=opened.variant.build_s, train_s=opened.variant.train_s,
        build_details=opened.variant.details or None, target="torch",
        variant_path=str(opened.variant.path) if opened.variant.path else None,
    )


def _pad_id(model: Artifact) -> int:
    config = _config(model)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = config.get(key)
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def _kv_dtype_bytes(lm: Any) -> int:
    """The KV cache's element size: the dtype of the model's float weights (int8-dynamic keeps activations float32)."""
    import torch

    for param in lm.parameters():
        if param.is_floating_point():
            return int(torch.finfo(param.dtype).bits // 8)
    return 4

