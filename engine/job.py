"""Run one cell (or a study's reference outputs) in the current process: build, load, time, check accuracy."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.artifacts import ONNX, TF_FORMATS, TORCHSCRIPT, Artifact
from engine.data import (
    Dataset,
    attention_mask,
    eval_from_data,
    eval_set,
    synthesis_summary,
    take_batch,
)
from engine.data import roles as input_roles
from engine.diagnostics import cell_diagnostics, layer_errors
from engine.executors.partner import Partner, PartnerError
from engine.executors.tasks import ProgressFn, task
from engine.measure import accuracy, gpu, latency, memory, noise, profile, rounds
from engine.optimizations.base import Chain
from engine.optimizations.build import build_variant
from engine.plan import Cell, StudySettings
from engine.prepare import REFERENCE_FILE, dataset_of, load_reference, open_cell

from engine.results import CellResult, Fidelity, LatencySummary, Rounds, Status, TaskMetric
from engine.runtimes import Runtime, Session, get
from engine.variants import BuildContext, Variant

# Prefix of the reference's temp file while it is written, in the study's folder.
REFERENCE_TEMP = ".reference-"
# Batch used to compute the reference outputs when the model does not fix one.
REFERENCE_BATCH = 8


def run_batches(session: Session, inputs: dict[str, np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Outputs for every sample, in full batches (the last one wraps around and is trimmed)."""
    n = next(iter(inputs.values())).shape[0]
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, batch_size):
        prepared = session.prepare(take_batch(inputs, start, batch_size))
        out = session.run(prepared)
        session.synchronize()
        arrays = session.fetch(out)
        keep = min(batch_size, n - start)
        chunks.append([a[:keep] for a in arrays])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def compute_reference(study_dir: Path, model: Artifact, data_path: str | None, settings: StudySettings,
                      progress: ProgressFn) -> dict[str, Any]:
    """fp32 outputs of the original model on the evaluation inputs, saved once for the whole study."""
    progress("reference outputs", 0.0)
    dataset = dataset_of(model, data_path)
    inputs, labels = eval_set(dataset, model.spec, settings.eval_samples, settings.padding)
    runtime_id, options = ("onnxruntime", {"graph_optimization_level": "disable"}) if model.format == ONNX else (
        ("torchscript", {"freeze": False}) if model.format == TORCHSCRIPT else ("torch", {}))
    if model.format in TF_FORMATS:  # TensorFlow's own call of the model, as uploaded
        runtime_id, options = "tensorflow", {}
    runtime = get(runtime_id).create(settings.threads, options)
    ctx = BuildContext(model.spec)
    variant = build_variant(model, Chain(()), runtime.consumes, ctx)
    with runtime.load(variant) as session:
        outputs = run_batches(session, inputs, model.spec.fixed_batch or REFERENCE_BATCH)
    payload = {f"input/{k}": v for k, v in inputs.items()}
    payload.update({f"output/{i}": o for i, o in enumerate(outputs)})
    if labels is not None:
        payload["labels"] = labels
    _write_reference(study_dir, payload)
    progress("reference outputs", 1.0)
    return {"runtime": runtime_id, "samples": int(next(iter(inputs.values())).shape[0]),
            "synthetic": not eval_from_data(dataset), "labels": labels is not None}


def _write_reference(study_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the .npz beside its final name, fsync it, then rename: a reader (a cell, a retry after a crash)
    finds the whole file or none, never a truncated one. The temp name carries this pid (stale-file cleanup)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f"{REFERENCE_TEMP}{os.getpid()}-", suffix=".npz", dir=study_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)  # type: ignore[arg-type]
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, study_dir / REFERENCE_FILE)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def inputs_record(model: Artifact, dataset: Dataset | None, settings: StudySettings) -> dict[str, Any]:
    """How the cell's timed and evaluation inputs were made (the results JSON's `inputs`), with a one-line
    summary for its notes: every cell of a study shares it, so the results show it once above the table."""
    roles = input_roles(model.spec)
    if eval_from_data(dataset):
        summary = "inputs from the data file's evaluation samples"
        if settings.padding:
            summary += f"; the padding setting ({settings.padding:.0%}) applies to synthesized inputs only"
        return {"source": "data", "roles": roles, "padding": None, "summary": summary}
    return {"source": "synthesized", "roles": roles, "padding": settings.padding,
            "summary": synthesis_summary(model.spec, settings.padding)}


def run_cell(study_dir: Path, model: Artifact, cell: Cell, settings: StudySettings, data_path: str | None,
             progress: ProgressFn, baseline: Cell | None = None) -> CellResult:
    """Build the cell's variant, load it, time it and compare its outputs with the reference; then, given the
    study's `baseline` cell, time the two in alternating rounds (engine.measure.rounds) for the speedup."""
    opened = open_cell(model, cell, settings, data_path, progress)
    runtime_cls, variant, gpu_device = opened.runtime_cls, opened.variant, opened.gpu_device
    inputs, reference, labels = load_reference(study_dir)
    feeds = take_batch(inputs, 0, cell.batch_size)

    progress("loading", 0.0)
    t0 = time.perf_counter()
    session = opened.runtime.load(variant)
    load_s = time.perf_counter() - t0
    with session:
        prepared = session.prepare(feeds)
        t0 = time.perf_counter()
        session.run(prepared)
        session.synchronize()
        first_run_ms = (time.perf_counter() - t0) * 1e3
        nvml = gpu.open_nvml(gpu_device) if gpu_device else None
        try:
            energy = gpu.EnergyMeter(nvml)
            # one pass over the process table on each side of the timed loop, never inside it, and outside
            # the energy window so that reading the table is not billed to the device
            load_before = noise.snapshot()
            energy.start()
            samples = latency.measure(session, prepared, settings.measure, progress)
            window = energy.stop()
            machine_load = noise.finish(load_before)
            peak_allocated = getattr(session, "peak_allocated_mb", None)
            device = gpu.device_metrics(nvml, window, len(samples), cell.batch_size,
                                        peak_allocated() if peak_allocated else None) if nvml else None
        finally:
            if nvml is not None:
                nvml.close()
        progress("accuracy", 0.0)
        outputs = run_batches(session, inputs, cell.batch_size)
        applied = dict(session.applied)
        paired = _rounds(session, prepared, samples, study_dir, model, cell, baseline, settings, data_path,
                         progress)
        # the cell's own peak: the profile below opens a second session (ONNX Runtime, OpenVINO) that is not the cell's
        peak_host_mb = memory.peak_host_mb()
        # after every timed call: profiling, reading the graph and the machine never run beside the timing
        progress("profiling", 0.0)
        profiled = _profile(opened.runtime, session, variant, feeds, float(np.median(samples)))
    steps = [step.id for step in cell.parsed_chain().steps]
    progress("layer errors", 0.0)
    diagnostics = {**cell_diagnostics(variant, steps, runtime_cls.device, gpu_device), **profiled,
                   **_layer_errors(model, variant, steps, opened.edits, inputs, settings.threads)}
    if diagnostics.get("quantization") and diagnostics.get("op_types"):
        diagnostics["quantization"]["qdq_share"] = profile.qdq_share(diagnostics["op_types"])
        diagnostics["quantization"]["unfused_qdq_nodes"] = diagnostics.get("unfused_qdq_nodes")
    summary = latency.summarize(samples, cell.batch_size)
    verdict = noise.noise_verdict(samples, summary["latency_ms"]["p50_ci95"], machine_load, settings.threads)
    fidelity = accuracy.fidelity(reference, outputs, attention_mask(model.spec, inputs))
    task_metric = accuracy.task_metric(outputs, labels)
    made = inputs_record(model, opened.dataset, settings)
    notes = [made["summary"], *dict.fromkeys(variant.notes)]
    if variant.cached:
        notes.append("variant taken from the build cache")
    if paired is not None and paired.error:
        notes.append(f"speedup from separate timings: the interleaved rounds with the baseline failed "
                     f"({paired.error})")
    return CellResult(
        cell=cell.index, variant=cell.variant, runtime=cell.runtime, batch_size=cell.batch_size, status=Status.OK,
        latency_ms=LatencySummary.from_json(summary["latency_ms"]),
        throughput_per_s=summary["throughput_per_s"],
        load_s=load_s,
        first_run_ms=first_run_ms,
        peak_host_mb=peak_host_mb,
        peak_device_mb=device["peak_device_mb"] if device else None,
        device_metrics=device,
        model_size_mb=variant.size_bytes / 2**20,
        fidelity=Fidelity.from_json(fidelity),
        task=TaskMetric.from_json(task_metric),
        inputs=made,
        settings={"threads": settings.threads, "device": runtime_cls.device, **applied,
                  "warmup": settings.measure.warmup, "min_iterations": settings.measure.iterations,
                  "min_seconds": settings.measure.min_seconds, "rounds": settings.measure.rounds},
        notes=notes,
        build_s=variant.build_s,
        train_s=variant.train_s,
        build_details=variant.details or None,
        target=runtime_cls.consumes,
        variant_path=str(variant.path) if variant.path else None,
        samples_ms=samples.astype(np.float32).tolist(),
        machine_load=machine_load,
        noise=verdict,
        paired=paired,
        diagnostics=diagnostics,
    )


def _profile(runtime: Runtime, session: Session, variant: Variant, feeds: dict[str, np.ndarray],
             p50_ms: float) -> dict[str, Any]:
    """The diagnostics' `top_ops`, `op_types` and `profile_overhead_ms` from the runtime's own profiler (after the
    timing, so the timed samples never carry its cost); `profile_error` instead when it cannot say."""
    runs = profile.profile_runs(p50_ms)
    start = time.perf_counter()
    try:
        summary: dict[str, Any] = profile.summarize(runtime.profile(session, variant, feeds, runs), runs)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors are bare Exceptions; a note, not the cell's failure
        summary = {"top_ops": None, "op_types": None, "profile_error": f"{type(exc).__name__}: {exc}"[:300]}
    return {**summary, "profile_runs": runs, "profile_overhead_ms": (time.perf_counter() - start) * 1e3}


def _layer_errors(model: Artifact, variant: Variant, steps: list[str], edits: list[dict[str, Any]],
                  inputs: dict[str, np.ndarray], threads: int) -> dict[str, Any]:
    """The diagnostics' per-layer errors against the fp32 reference (engine.diagnostics.layer_errors), after every
    timed call; `layer_errors_error` instead when they cannot be computed (a note, not the cell's failure)."""
    try:
        return layer_errors(model, variant, steps, edits, inputs, threads)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors are bare Exceptions; a note, not the cell's failure
        return {"layer_errors": None, "layer_errors_error": f"{type(exc).__name__}: {exc}"[:300]}


def _rounds(session: Session, prepared: Any, samples: np.ndarray, study_dir: Path, model: Artifact, cell: Cell,
            baseline: Cell | None, settings: StudySettings, data_path: str | None,
            progress: ProgressFn) -> Rounds | None:
    """The cell and its baseline in alternating rounds, the baseline loaded in a partner process: the `paired`
    record, with only an error when the partner failed (the cell keeps its own timings), None when not asked."""
    rounds_wanted = settings.measure.rounds
    if baseline is None or rounds_wanted < 1 or baseline.index == cell.index:
        return None
    seconds = rounds.block_seconds(settings.measure.min_seconds)
    iterations = rounds.block_iterations(float(np.median(samples)), seconds)
    block = latency.MeasureSettings(warmup=rounds.BLOCK_WARMUP, iterations=iterations, min_seconds=0.0)
    try:
        with Partner(study_dir, model, baseline, settings, data_path, seconds) as partner:
            paired = rounds.run_rounds(
                lambda: latency.measure(session, prepared, block), partner.time_block, rounds_wanted,
                baseline.index, (iterations, partner.iterations), progress, between=rounds.settle)
    except PartnerError as exc:
        return Rounds(baseline_cell=baseline.index, error=str(exc))
    return paired.record()


@task("reference")
def reference_task(payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """The worker's "reference" job: the study's fp32 reference outputs."""
    settings = StudySettings.from_json(payload["settings"])
    if settings.generation is not None:  # a generation study's reference: perplexity and argmax (engine/generation)
        from engine.generation import cell as generation

        return generation.compute_reference(Path(payload["study_dir"]), Artifact.from_json(payload["model"]),
                                            settings, progress)
    return compute_reference(Path(payload["study_dir"]), Artifact.from_json(payload["model"]), payload.get("data"),
                             StudySettings.from_json(payload["settings"]), progress)


@task("cell")
def cell_task(payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """The worker's "cell" job: one cell measured (and timed against its baseline when the payload names one)."""
    settings = StudySettings.from_json(payload["settings"])
    if settings.generation is not None:  # the generation scenario: timed generate() calls (engine/generation)
        from engine.generation import cell as generation

        return generation.run_cell(Path(payload["study_dir"]), Artifact.from_json(payload["model"]),
                                   Cell.from_json(payload["cell"]), settings, payload.get("data"), progress).to_json()
    baseline = Cell.from_json(payload["baseline"]) if payload.get("baseline") else None
    return run_cell(Path(payload["study_dir"]), Artifact.from_json(payload["model"]), Cell.from_json(payload["cell"]),
                    StudySettings.from_json(payload["settings"]), payload.get("data"), progress, baseline).to_json()
