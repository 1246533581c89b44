"""The study service: one request from every front end, validated once, stored with its jobs, run or deleted.

The CLI and the pages only collect a person's input into a StudyRequest and show the one-line errors of its
validate()/submit(); every rule (defaults, bounds, options for runtimes not picked, duplicate chains, the data
file) lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import shared
from engine.artifacts import Artifact
from engine.errors import UserError
from engine.executors.limits import default_memory_limit_mb
from engine.executors.tasks import ProgressFn, task
from engine.generation.settings import DEFAULT_VARIANTS as GENERATION_VARIANTS
from engine.generation.settings import generation_settings
from engine.measure.latency import MeasureSettings
from engine.optimizations.base import Chain
from engine.plan import (
    DEFAULT_EVAL_SAMPLES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_VARIANTS,
    Cell,
    StudySettings,
    default_threads,
    expand,
    parse_batch_sizes,
    parse_runtimes,
    parse_variants,
    runtimes_for,
)
from engine.results import Status
from engine.runtimes import check_runtime_options, parse_runtime_options
from storage.paths import study_dir, sub_dir

if TYPE_CHECKING:
    from engine.worker import WorkerEvents


# Where each phase of a cell sits in its whole run, so one bar moves forward through every phase.
_PHASES = [("starting", 0.0, 0.02), ("reference outputs", 0.02, 0.1), ("building", 0.1, 0.4),
           ("exporting", 0.1, 0.4), ("distill", 0.1, 0.4), ("loading the cached", 0.1, 0.4),
           ("loading", 0.4, 0.5), ("warming up", 0.5, 0.55), ("measuring", 0.55, 0.85), ("accuracy", 0.85, 0.88),
           ("interleaved rounds", 0.88, 0.97), ("profiling", 0.97, 1.0)]


def cell_fraction(status: str, phase: str | None, fraction: float | None) -> float:
    """How far a cell is through its whole run (0 queued, 1 ended), from its current phase and progress in it."""
    if status == Status.QUEUED:
        return 0.0
    if status != Status.RUNNING:
        return 1.0
    name = phase if isinstance(phase, str) and phase else "starting"  # None, or NaN from a frame
    within = 0.0 if fraction is None or fraction != fraction else float(fraction)  # NaN: not reported
    for prefix, low, high in _PHASES:
        if name.startswith(prefix):
            return low + (high - low) * min(max(within, 0.0), 1.0)
    return 0.0


@dataclass
class StudyRequest:
    """A study as a person asks for it, from any front end: the values as given (chain texts, runtime ids, the
    batch sizes' text, `RUNTIME.KEY=VALUE` lines); None means the default."""

    model: Artifact | None  # None until the model is inspected: check_arguments() needs none
    variants: list[str] | None = None  # chain texts; default DEFAULT_VARIANTS
    runtimes: list[str] | None = None  # default: every runtime available here
    batch_sizes: str = "1"  # comma-separated
    warmup: int = 10
    iterations: int = 50
    min_seconds: float = 2.0
    rounds: int = 10
    threads: int | None = None  # default: every core
    timeout_s: float = DEFAULT_TIMEOUT_S
    eval_samples: int = DEFAULT_EVAL_SAMPLES
    runtime_options: list[str] = field(default_factory=list)
    memory_limit_mb: float | None = None  # default: 80% of the machine's memory
    padding: float = 0.0  # kept with a data file too: the results then say it applied to synthesized inputs only
    data_path: str | None = None
    name: str | None = None
    model_name: str | None = None
    created_by: str | None = None
    owner: str | None = None  # a worker id: only that worker runs the study until release_study
    # the generation scenario (decoder-only models): "latency" (the default) or "generate", and its settings
    scenario: str = "latency"
    prompt_lens: str = "32,256"
    new_tokens: int = 64
    generations: int = 10
    # machine kinds of a Ray cluster (cpu-avx512, gpu-h100): each cell once per kind, placed by the Ray dispatcher
    machines: list[str] | None = None

    def check_arguments(self) -> tuple[list[Chain], list[str], list[int], StudySettings]:
        """The rules that need no model, checked before a model is opened (that takes a limited child, seconds):
        the parsed chains (duplicates dropped), runtimes, batch sizes and settings. UserError with one line."""
        if self.variants is not None and not [v for v in self.variants if v.strip()]:
            raise UserError("no variant given: give at least one, e.g. baseline or int8-dynamic")
        generation = generation_settings(self.scenario, self.prompt_lens, self.new_tokens, self.generations)
        defaults = GENERATION_VARIANTS if generation is not None else DEFAULT_VARIANTS
        chains = parse_variants(list(defaults) if self.variants is None else self.variants)
        if self.runtimes is not None and not [r for r in self.runtimes if r.strip()]:
            raise UserError("no runtime given: give at least one of those available here")
        runtimes = parse_runtimes(self.runtimes)
        batch_sizes = parse_batch_sizes(self.batch_sizes)
        options = parse_runtime_options(self.runtime_options)
        unused = sorted(set(options) - set(runtimes))
        if unused:
            raise UserError(f"runtime options for {', '.join(unused)}, which this study does not run; add the runtime "
                            "to the study or drop its options")
        try:
            measure = MeasureSettings(self.warmup, self.iterations, self.min_seconds, self.rounds)
        except ValueError as exc:  # named as the CLI's flags and the page's fields name them
            raise UserError(str(exc).replace("_", "-")) from exc
        settings = StudySettings(
            measure=measure, threads=default_threads() if self.threads is None else int(self.threads),
            timeout_s=float(self.timeout_s), eval_samples=int(self.eval_samples), runtime_options=options,
            memory_limit_mb=default_memory_limit_mb() if self.memory_limit_mb is None else self.memory_limit_mb,
            padding=float(self.padding), generation=generation)
        return chains, runtimes, batch_sizes, settings

    def validate(self, check_files: bool = True) -> PlannedStudy:
        """Every rule, in one place: check_arguments(), then the cells the model expands into, each runnable or not
        and why; `check_files` also reads the data file against the model (in a limited child: seconds)."""
        if self.model is None:
            raise UserError("no model given: upload one (Models page) or name its file")
        chains, runtimes, batch_sizes, settings = self.check_arguments()
        if self.runtimes is None:  # every available runtime that runs this model's format
            runtimes = runtimes_for(self.model.format, runtimes)
        cells, settings = plan_study(self.model, chains, runtimes, batch_sizes, settings)
        if self.machines:
            if settings.generation is not None:  # its cells' prompt lengths are kept by cell index
                raise UserError("--machines does not take a generation study yet: submit one study per machine kind")
            cells = per_machine(cells, self.machines)
        if check_files and self.data_path:
            from engine.inspection import check_data

            check_data(self.data_path, self.model.spec)  # a bad file is a usage error, not n failed cells
        return PlannedStudy(self.model, chains, runtimes, batch_sizes, settings, cells)

    def submit(self) -> tuple[int, list[Cell]]:
        """Validate, then store the study and queue its runnable cells: its id and its cells."""
        planned = self.validate()
        study_id = store_study(planned, name=self.name, model_name=self.model_name, data_path=self.data_path,
                               owner=self.owner, created_by=self.created_by)
        return study_id, planned.cells


@dataclass(frozen=True)
class PlannedStudy:
    """A validated request: what will be stored, and the cells (with why some cannot run) to preview."""

    model: Artifact
    chains: list[Chain]
    runtimes: list[str]
    batch_sizes: list[int]
    settings: StudySettings
    cells: list[Cell]

    @property
    def runnable(self) -> int:
        return sum(c.runnable for c in self.cells)


def eta_s(finished_s: list[float], cells_left: float) -> float | None:
    """Seconds until a study ends: the mean time its finished cells took, for the cells (or parts) left."""
    if not finished_s or cells_left <= 0:
        return None
    return sum(finished_s) / len(finished_s) * cells_left


def plan_cells(model: Artifact, chains: list[Chain], runtimes: list[str], batch_sizes: list[int],
               settings: StudySettings) -> list[Cell]:
    """The study's cells, once the model's format, the runtime options and a shared server's bounds allow it."""
    return plan_study(model, chains, runtimes, batch_sizes, settings)[0]


def plan_study(model: Artifact, chains: list[Chain], runtimes: list[str], batch_sizes: list[int],
               settings: StudySettings) -> tuple[list[Cell], StudySettings]:
    """plan_cells(), with the settings to store: a generation study's record each cell's prompt length."""
    shared.refuse_code_format(model.format, model.path.name)
    check_runtime_options(settings.runtime_options)
    if settings.generation is not None:
        from engine.generation.plan import expand as expand_generation

        cells, generation = expand_generation(model, chains, runtimes, batch_sizes, settings.generation)
        settings = replace(settings, generation=generation)
    else:
        cells = expand(model.format, model.spec, chains, runtimes, batch_sizes)
    shared.check_study(settings, batch_sizes, sum(c.runnable for c in cells))
    return cells, settings


def per_machine(cells: list[Cell], machines: list[str]) -> list[Cell]:
    """Each cell once per machine kind, numbered anew. A runtime unavailable on this machine may be installed on the
    cluster's: such cells are queued, and the dispatcher says `unavailable: no node with ...` if none has it."""
    from engine.executors.ray_node import machine_resource

    kinds = list(dict.fromkeys(m.strip().lower() for m in machines if m.strip()))
    for kind in kinds:
        try:
            machine_resource(kind)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    out: list[Cell] = []
    for cell in cells:
        here_only = cell.status == Status.UNAVAILABLE
        for kind in kinds:
            out.append(replace(cell, index=len(out), machine=kind, status="pending" if here_only else cell.status,
                               reason=None if here_only else cell.reason))
    return out


def submit_study(model: Artifact, variants: list[Chain], runtimes: list[str], batch_sizes: list[int],
                 settings: StudySettings, *, name: str | None = None, model_name: str | None = None,
                 data_path: str | None = None, owner: str | None = None,
                 created_by: str | None = None) -> tuple[int, list[Cell]]:
    """Plan and store a study made in code (the demo, benchmarks) whose arguments are parsed already; front ends
    go through StudyRequest. Its id and its cells."""
    cells, settings = plan_study(model, variants, runtimes, batch_sizes, settings)
    planned = PlannedStudy(model, variants, runtimes, batch_sizes, settings, cells)
    return store_study(planned, name=name, model_name=model_name, data_path=data_path, owner=owner,
                       created_by=created_by), cells


def store_study(planned: PlannedStudy, *, name: str | None = None, model_name: str | None = None,
                data_path: str | None = None, owner: str | None = None, created_by: str | None = None) -> int:
    """Store the study and queue its runnable cells; n/a and unavailable cells are final rows at once.

    With an `owner` (a worker id) only the worker of that id runs the cells until release_study.
    `created_by` is the signed-in person on a shared server, who alone (with the admins) may delete it;
    there the server's cap on unfinished studies per person is checked here."""
    from storage import blobs, catalogue, queue
    from storage.db import session

    model, cells = planned.model, planned.cells
    with session() as s:
        if shared.enabled():
            shared.check_open_studies(queue.open_studies(s, created_by))
        model_row = catalogue.get_or_create_model(s, model.to_json(), model_name or model.path.name,
                                                  created_by=created_by)
        dataset = None
        if data_path:
            sha = blobs.put_file(data_path)
            dataset = catalogue.get_or_create_dataset(s, sha, Path(data_path).name, Path(data_path).stat().st_size,
                                                      created_by=created_by)
        study = queue.create_study(
            s, name=name or f"{model_row.name} ({', '.join(planned.runtimes)})", model=model_row, dataset=dataset,
            variants=[c.name for c in planned.chains], runtimes=planned.runtimes, batch_sizes=planned.batch_sizes,
            settings=planned.settings.to_json(), cells=[c.to_json() for c in cells], owner=owner,
            created_by=created_by,
        )
        study_id = study.id
    shared.audit("submit-study", created_by, study_id=study_id, model_id=model_row.id, cells=len(cells),
                 runnable=sum(c.runnable for c in cells))
    return study_id


def run_study(study_id: int, events: WorkerEvents | None = None, *, owner: str | None = None) -> None:
    """Run the study's queued jobs here until none is queued or running (or SIGTERM/Ctrl-C stops the worker).

    `owner` is the id the study was submitted with: this worker runs it alone. The caller releases it."""
    from engine.worker import Worker

    Worker(worker_id=owner, study_id=study_id, events=events).run(until_idle=True)


def release_study(study_id: int, owner: str) -> None:
    """End `owner`'s hold on the study: its cells still queued become work for any worker."""
    from storage import queue
    from storage.db import session

    with session() as s:
        queue.release_study(s, study_id, owner)


DEMO_VARIANTS = ("baseline", "int8-static", "fp16")
DEMO_RUNTIMES = ("torch", "onnxruntime", "openvino")
DEMO_BATCH_SIZES = (1, 32)


@task("demo")
def _build_demo(payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    from engine.artifacts import intake
    from engine.demo import build_demo

    model_path, data_path, report = build_demo()
    return {"artifact": intake(model_path).to_json(), "data": str(data_path), "report": report}


# Seconds the demo's build (training the digits CNN the first time) may take in its child.
DEMO_BUILD_TIMEOUT_S = 600.0


def start_demo(created_by: str | None = None) -> tuple[int, dict[str, float]]:
    """Build the demo model (trained the first time) in a child process and queue its study; the study's id and
    the model's training report."""
    from engine.executors.local import run_child

    outcome = run_child(_build_demo, {}, DEMO_BUILD_TIMEOUT_S, sub_dir("logs") / "demo.log")
    if outcome.status != Status.OK or outcome.result is None:
        where = "" if shared.enabled() else f"; see {sub_dir('logs') / 'demo.log'}"  # no server paths to visitors
        raise UserError(f"the demo could not be built ({outcome.status}: {outcome.error}){where}")
    built = outcome.result
    study_id = submit_demo_study(Artifact.from_json(built["artifact"]), built["data"], created_by=created_by)
    return study_id, built["report"]


def submit_demo_study(artifact: Artifact, data_path: str, created_by: str | None = None) -> int:
    """Queue the demo study (the Home page's button and `python -m engine demo`): every CPU runtime at batch
    1 and 32, settings short enough that results appear within about a minute and a half on 2 cores."""
    from engine.measure.latency import MeasureSettings
    from engine.optimizations import parse_chain
    from engine.plan import default_threads, parse_runtimes

    available = parse_runtimes(None)
    # rounds off: each round's partner process (an interpreter, torch, the baseline loaded) costs the demo's
    # sub-millisecond cells ~7 s apiece, 134 s in all instead of 46 s to the first results; its speedups keep the
    # conservative interval of separate timings, and a study of one's own model gets the rounds by default
    settings = StudySettings(measure=MeasureSettings(warmup=5, iterations=30, min_seconds=0.5, rounds=0),
                             threads=default_threads(), timeout_s=300)
    study_id, _ = submit_study(artifact, [parse_chain(v) for v in DEMO_VARIANTS],
                               [r for r in DEMO_RUNTIMES if r in available], list(DEMO_BATCH_SIZES), settings,
                               name="Demo: digits CNN", model_name="demo digits CNN", data_path=data_path,
                               created_by=created_by)
    return study_id


def delete_study(study_id: int, user: str | None = None) -> None:
    """Delete a study's rows, its folder (reference outputs, logs) and the blobs no other row uses.

    On a shared server only its creator or an admin (`user`) may."""
    from storage import blobs
    from storage import catalogue
    from storage import queue
    from storage.db import session

    referenced: set[str] = set()
    with session() as s:
        study = queue.get_study(s, study_id)
        if study is None:
            raise UserError(f"there is no study #{study_id} (deleted already?); pick one the Results page lists")
        if not shared.may_change(user, study.created_by):
            raise UserError(f"only {study.created_by or 'its creator'} or an admin may delete study #{study_id}")
        running = queue.has_running_jobs(s, study_id)
        if running:  # a worker is measuring one of its cells: deleting the rows under it would break that worker
            queue.cancel_study(s, study_id)
        else:
            queue.delete_study(s, study_id)
            referenced = catalogue.referenced_blobs(s)
    if running:
        raise UserError(f"study #{study_id} was still running: it is cancelled now; delete it once its running "
                        "cell has stopped (a few seconds)")
    blobs.collect_garbage(referenced)
    blobs.remove_tree(study_dir(study_id))
    shared.audit("delete-study", user, study_id=study_id)


def rerun_noisy_cells(study_id: int) -> int:
    """Queue the study's noisy cells again (their old results go); how many were queued."""
    from engine.report import source
    from storage import queue
    from storage.db import session

    with session() as s:
        noisy = [row.cell for row in source.study_results(s, study_id)
                 if row.cell is not None and (row.noise or {}).get("noisy")]
        return queue.rerun_cells(s, study_id, noisy)


def rebuild_with_float_layers(study_id: int, cell: int, layers: list[str], user: str | None = None) -> tuple[int, str]:
    """Queue, in the same study, cell `cell`'s variant rebuilt with these layers kept in float by its int8 step
    (same runtime and batch size): the new cell's index and its variant's name. On a shared server only the
    study's creator or an admin may."""
    from engine.diagnostics import with_float_layers
    from engine.optimizations.base import chain_from_json
    from engine.plan import Cell
    from storage import queue
    from storage.db import session
    from storage.results import study_jobs

    if not layers:
        raise UserError("pick at least one layer to keep in float")
    with session() as s:
        study = queue.get_study(s, study_id)
        if study is None:
            raise UserError(f"there is no study #{study_id} (deleted already?); pick one the Results page lists")
        if not shared.may_change(user, study.created_by):
            raise UserError(f"only {study.created_by or 'its creator'} or an admin may add cells to study #{study_id}")
        jobs = {job.cell: job for job, _ in study_jobs(s, study_id)}
        if cell not in jobs:
            raise UserError(f"study #{study_id} has no cell {cell}; `python -m engine explain {study_id}` lists them")
        source = jobs[cell]
        chain = with_float_layers(chain_from_json(list(source.chain)), layers)
        if chain is None:
            raise UserError(f"cell {cell} ({source.variant}) has no int8-static or int8-dynamic step to keep layers "
                            "in float; pick a cell quantized by one of them")
        same = next((job.cell for job in jobs.values() if job.variant == chain.name and job.runtime == source.runtime
                     and job.batch_size == source.batch_size and job.machine == source.machine), None)
        if same is not None:
            raise UserError(f"cell {same} of this study is that variant already ({chain.name})")
        # on the same runtime, batch size and machine kind (a Ray study's cell stays on its kind of machine)
        new = Cell(0, chain.name, tuple(chain.to_json()), source.runtime, source.batch_size, machine=source.machine)
        [index] = queue.add_cells(s, study_id, [new.to_json()])
    shared.audit("rebuild-float", user, study_id=study_id, cell=cell, new_cell=index, layers=layers)
    return index, chain.name
