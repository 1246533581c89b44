"""Generation on ONNX Runtime through onnxruntime-genai: its model builder turns the decoder's Hugging Face folder
into an ONNX model with a KV cache (GroupQueryAttention; fp32 weights, or int8/int4 weight-only MatMulNBits), and
its Generator decodes greedily on ONNX Runtime's CPU provider, token by token.

A generation study's `onnxruntime` cells run here (engine/generation/plan.py). The built model is cached in the
data folder by (model, builder recipe, onnxruntime-genai version). Timing is engine/measure/generation.py's; the
fidelity comes from the same model.onnx run by a plain ONNX Runtime session over the evaluation windows (a
prefill with an empty KV cache returns the logits of every position).

Standard library at import: the plan reads the recipes and reasons without onnxruntime or torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.artifacts import Artifact, folder_size
from engine.executors.tasks import ProgressFn
from engine.optimizations.base import Chain
from engine.plan import Cell, StudySettings
from engine.generation.record import fidelity_fields, generation_result
from engine.results import CellResult, Status

if TYPE_CHECKING:
    from engine.generation.prompts import TokenSource

RUNTIME = "onnxruntime"  # the runtime id whose generation cells run here
ENGINE = "onnxruntime-genai"
VERSION = "0.18.0"  # the version checked (requirements.txt)
MISSING = (f"generation on ONNX Runtime needs onnxruntime-genai (requirements.txt), which is not installed: "
           f"pip install onnxruntime-genai=={VERSION}")
# Dense decoders the model builder of onnxruntime-genai 0.18 builds (its create_model's dispatch, text-only ones)
ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "PhiForCausalLM",
    "Phi3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GraniteForCausalLM",
    "OlmoForCausalLM", "NemotronForCausalLM", "SmolLM3ForCausalLM", "Ernie4_5ForCausalLM",
})
# ONNX Runtime's CPU GroupQueryAttention kernel refuses other head sizes ("head_size shall be a multiple of 16")
HEAD_MULTIPLE = 16
_META = "variant.json"


@dataclass(frozen=True)
class Recipe:
    """What the model builder is asked for: `-p precision -e cpu` and its extra options."""

    precision: str  # fp32, int8 or int4
    options: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.options)
        return f"-p {self.precision} -e cpu" + (f" --extra_options {extra}" if extra else "")


def recipe(chain: Chain) -> Recipe | str:
    """The builder recipe of a chain, or why the builder makes nothing like it: fp32 (`baseline`) and weight-only
    int8 / int4 (RTN, the builder's default quantizer, symmetric, MatMul weights only)."""
    steps = chain.steps
    if not steps:
        return Recipe("fp32")
    if len(steps) == 1 and steps[0].id == "int8-weight-only":
        return Recipe("int8")
    if len(steps) == 1 and steps[0].id == "int4-weight-only":
        return Recipe("int4", (("block_size", str(int(getattr(steps[0].config, "group_size", 32)))),))
    other = next((s.id for s in steps if s.id not in ("int8-weight-only", "int4-weight-only")), steps[0].id)
    return (f"onnxruntime-genai's model builder makes fp32 (baseline), int8-weight-only and int4-weight-only models "
            f"for the CPU; {other} has no builder equivalent (chains of several passes neither)")


def missing_reason() -> str | None:
    return None if importlib.util.find_spec("onnxruntime_genai") is not None else MISSING


def plan_reason(model: Artifact, chain: Chain) -> tuple[str, str] | None:
    """(status, reason) when this chain cannot generate on ONNX Runtime here; None when it can."""
    if (why := missing_reason()) is not None:
        return Status.UNAVAILABLE, why
    made = recipe(chain)
    if isinstance(made, str):
        return Status.NOT_APPLICABLE, made
    config = _config(model.path)
    arch = (config.get("architectures") or [model.info.get("architecture")])[0]
    if arch not in ARCHITECTURES:
        return Status.NOT_APPLICABLE, (f"onnxruntime-genai {VERSION}'s model builder does not build {arch} (it builds "
                                       "Llama, Mistral, Qwen2/3, Phi, Gemma, Granite, OLMo, Nemotron, SmolLM3)")
    head = head_size(config)
    if head is not None and head % HEAD_MULTIPLE:
        return Status.NOT_APPLICABLE, (f"onnxruntime-genai: ONNX Runtime's CPU GroupQueryAttention needs a head size "
                                       f"that is a multiple of {HEAD_MULTIPLE}; this model's is {head}")
    if not model.info.get("tokenizer"):
        return Status.NOT_APPLICABLE, ("onnxruntime-genai's model builder reads the folder's tokenizer; this folder "
                                       "has no tokenizer files")
    return None


def head_size(config: dict[str, Any]) -> int | None:
    head = config.get("head_dim")
    if isinstance(head, int) and head > 0:
        return head
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 else None


def _config(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "config.json").read_text()))


@dataclass(frozen=True)
class Built:
    """A builder output folder (model.onnx, its data, genai_config.json) and how it came to be."""

    folder: Path
    cached: bool
    build_s: float
    notes: list[str]
    details: dict[str, Any]

    @property
    def size_bytes(self) -> int:
        meta = self.folder / _META
        return folder_size(self.folder) - (meta.stat().st_size if meta.is_file() else 0)


def build(model: Artifact, chain: Chain, progress: ProgressFn) -> Built:
    """The chain's ONNX model from the model builder, built once per (model, recipe, builder version) into the
    data folder's variant cache (a temporary folder renamed into place, so a crash leaves no half model)."""
    from engine import __version__
    from storage.paths import sub_dir

    made = recipe(chain)
    if isinstance(made, str):
        raise ValueError(made)
    version = importlib.metadata.version("onnxruntime-genai")
    key = hashlib.sha256(json.dumps([__version__, model.sha256, ENGINE, version, made.precision, made.options])
                         .encode()).hexdigest()[:32]
    root = sub_dir("variants")
    final = root / key
    start = time.perf_counter()
    if (final / _META).is_file():
        meta = json.loads((final / _META).read_text())
        return Built(final, True, time.perf_counter() - start, list(meta["notes"]), dict(meta["details"]))
    progress("building with onnxruntime-genai's model builder", 0.0)
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=root))
    try:
        log = _run_builder(model.path, staging / "model", made, staging / "cache")
        details = {"builder": f"onnxruntime-genai {version} model builder", "arguments": made.describe(),
                   **_matmul_nbits(staging / "model" / "model.onnx")}
        notes = [_note(made, details)]
        (staging / "model" / _META).write_text(json.dumps(
            {"chain": chain.name, "target": ENGINE, "file": "model.onnx", "notes": notes, "details": details,
             "builder_log_tail": log[-2000:]}, indent=1))
        if not final.exists():  # built meanwhile by another process: keep theirs
            (staging / "model").rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta = json.loads((final / _META).read_text())
    return Built(final, False, time.perf_counter() - start, list(meta["notes"]), dict(meta["details"]))


def _run_builder(source: Path, out: Path, made: Recipe, cache: Path) -> str:
    """The builder's own Python entry (what `python -m onnxruntime_genai.models.builder -i SRC -o OUT -p P -e cpu`
    runs), offline: the input is the stored folder, no Hugging Face token is looked up. Its chatter is returned."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # the input is a local folder; nothing may be fetched
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    options = [f"{k}={v}" for k, v in (*made.options, ("hf_token", "false"))]
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        extra = parse_extra_options(None, str(source), str(out), made.precision, "cpu", str(cache), options)
        create_model(None, str(source), str(out), made.precision, "cpu", str(cache), **extra)
    return chatter.getvalue()


def _matmul_nbits(path: Path) -> dict[str, Any]:
    """What quantization the builder wrote: MatMulNBits nodes and their attributes, and the float MatMuls left."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute} if nbits else {}
    return {"matmul_nbits": len(nbits), "float_matmuls": sum(n.op_type == "MatMul" for n in graph.node),
            **{k: int(attrs[k]) for k in ("bits", "block_size", "accuracy_level") if k in attrs}}


def _note(made: Recipe, details: dict[str, Any]) -> str:
    if made.precision == "fp32":
        return "onnxruntime-genai's model builder made the fp32 ONNX model (GroupQueryAttention, KV cache)"
    level = details.get("accuracy_level")
    compute = ("activations quantized to int8 per block inside the kernel (accuracy_level 4, the builder's CPU "
               "default)" if level == 4 else f"accuracy_level {level}")
    return (f"onnxruntime-genai's model builder quantized {details.get('matmul_nbits')} MatMul weights to "
            f"int{details.get('bits')} (RTN, symmetric, blocks of {details.get('block_size')}; MatMulNBits), "
            f"{compute}; embeddings and norms stay fp32")


def load(folder: Path, threads: int) -> Any:
    """The built model in onnxruntime-genai, its decoder session on `threads` intra-op threads."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def evaluate(folder: Path, windows: Any, threads: int) -> tuple[float, Any]:
    """Perplexity and argmax over the evaluation windows from the built model.onnx's logits: a plain ONNX Runtime
    session, one window at a time as a prefill with an empty KV cache (the graph onnxruntime-genai runs)."""
    import numpy as np
    import onnxruntime as ort

    from engine.generation import fidelity

    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / decoder["filename"]), options, providers=["CPUExecutionProvider"])
    empty = {i.name: np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]),
                              np.float16 if "float16" in i.type else np.float32)
             for i in session.get_inputs() if i.name.startswith("past_key_values")}
    logits = [session.run(["logits"], {"input_ids": row[None], "attention_mask": np.ones_like(row[None]), **empty})[0]
              for row in np.asarray(windows, dtype=np.int64)]
    return fidelity.from_logits(np.concatenate(logits).astype(np.float32), windows)


def run_cell(model: Artifact, cell: Cell, settings: StudySettings, prompts: TokenSource, reference: dict[str, Any],
             progress: ProgressFn) -> CellResult:
    """Build (or take from the cache) the cell's model, then warm up and time greedy generations of the cell's batch
    and prompt length through onnxruntime-genai's Generator; then its perplexity and next-token agreement against
    the study's fp32 reference (engine/generation/cell.py's record)."""
    import numpy as np

    from engine.errors import UserError
    from engine.generation import fidelity
    from engine.generation.settings import kv_cache_bytes_per_token
    from engine.measure import generation as timing
    from engine.measure import memory

    gen = settings.generation
    if gen is None:
        raise UserError("the study has no generation settings")
    prompt_len = gen.prompt_len_of(cell.index)
    built = build(model, cell.parsed_chain(), progress)
    progress("loading", 0.0)
    t0 = time.perf_counter()
    og_model = load(built.folder, settings.threads)
    load_s = time.perf_counter() - t0

    ids = prompts.batch(cell.batch_size, prompt_len)
    progress("warming up", 0.0)
    for i in range(gen.warmup):
        timing.timed_genai_generation(og_model, ids, gen.new_tokens)
        progress("warming up", (i + 1) / max(gen.warmup, 1))
    timings = []
    for i in range(gen.generations):
        timings.append(timing.timed_genai_generation(og_model, ids, gen.new_tokens)[0])
        progress("measuring", (i + 1) / gen.generations)
    summary = timing.summarize(timings, cell.batch_size, prompt_len)
    peak_host_mb = memory.peak_host_mb()

    progress("accuracy", 0.0)
    perplexity, argmax = evaluate(built.folder, np.asarray(reference["windows"], dtype=np.int64), settings.threads)
    agree = fidelity.agreement(argmax, np.asarray(reference["argmax"]))
    config = _config(model.path)
    record = {
        **summary, "prompt_len": prompt_len, "new_tokens": gen.new_tokens,
        # the builder keeps the KV cache in fp32 on the CPU, whatever the weights' precision
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config, 4), "kv_cache_dtype_bytes": 4,
        **fidelity_fields(perplexity, reference, agree),
        "timer": "perf_counter around each generate_next_token() (CPU)",
    }
    version = importlib.metadata.version("onnxruntime-genai")
    import onnxruntime

    ort_version = onnxruntime.__version__  # the onnxruntime package's or onnxruntime-gpu's: the module is one
    notes = [prompts.note, *built.notes,
             f"generated by onnxruntime-genai {version}'s Generator on ONNX Runtime {ort_version} (CPU provider); "
             "perplexity and agreement from the same model.onnx in an ONNX Runtime session"]
    if built.cached:
        notes.append("variant taken from the build cache")
    return generation_result(
        cell, gen, timings, record, load_s=load_s, peak_host_mb=peak_host_mb, peak_device_mb=None,
        model_size_mb=built.size_bytes / 2**20,
        settings={"threads": settings.threads, "device": "cpu", "scenario": "generate", "engine": ENGINE,
                  "engine_version": version, "builder": built.details.get("arguments"),
                  "prompt_len": prompt_len, "new_tokens": gen.new_tokens, "warmup": gen.warmup,
                  "generations": gen.generations, "decoding": "greedy, EOS ignored (min_length = max_length)"},
        notes=notes, build_s=built.build_s, train_s=None,
        build_details={ENGINE: built.details}, target=ENGINE,
        variant_path=str(built.folder / "model.onnx"),
    )
