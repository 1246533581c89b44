"""Command line: `python -m engine bench|runtimes ...` — everything headless."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from engine.errors import UserError
from engine.results import FAILED, SKIPPED, CellResult, Status
from storage.paths import data_dir

EXIT_USAGE = 2


def _add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="build variants of a model and measure every runtime and batch size")
    p.add_argument("model", help="a model file (ONNX, TorchScript .pt, torch.export .pt2, zipped HF folder), 'demo' "
                                  "or 'demo-generate' (the demo decoder, with --scenario generate)")
    p.add_argument("--name", help="a name for the study")
    p.add_argument("--variants", default=None,
                   help="comma-separated chains, e.g. baseline,int8-dynamic,prune-structured:0.5+int8-static "
                        "(default: baseline,int8-dynamic,fp16)")
    p.add_argument("--runtimes", default=None, help="comma-separated runtime ids (default: every available one)")
    p.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default: 1)")
    p.add_argument("--data", help="an .npz of inputs named after the model's inputs, with optional labels and "
                                  "train/, calib/, eval/ prefixes")
    p.add_argument("--input-spec", help="inputs when the model does not store them, e.g. 'x:float32[B,3,224,224]'")
    p.add_argument("--seq-len", type=int, help="sequence length for dynamic sequence axes (default 128)")
    p.add_argument("--iterations", type=int, default=50, help="minimum timed iterations (default 50)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="minimum timed seconds (default 2)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up iterations (default 10)")
    p.add_argument("--rounds", type=int, default=10,
                   help="rounds timing each cell against its baseline alternately, for speedups with a 95%% "
                        "interval that machine drift cannot bias (default 10; 0: off, else at least 6)")
    p.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: all cores)")
    p.add_argument("--timeout", type=float, default=600.0, help="wall-clock limit per cell in seconds (default 600)")
    p.add_argument("--eval-samples", type=int, default=256, help="samples for fidelity and the task metric")
    p.add_argument("--padding", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of each synthesized sequence that is trailing padding (attention mask 0, the "
                        "pad id), for padded batches (default 0: no padding; a --data file is used as it is)")
    p.add_argument("--option", action="append", default=[], metavar="RUNTIME.KEY=VALUE",
                   help="a runtime option, e.g. onnxruntime.graph_optimization_level=basic (repeatable; "
                        "`python -m engine runtimes --options` lists them)")
    p.add_argument("--memory-limit", type=float, default=None, metavar="MB",
                   help="address-space limit per cell in MB (default: 80%% of the machine's memory)")
    p.add_argument("--scenario", choices=["latency", "generate"], default="latency",
                   help="latency: time one forward call (default); generate: a decoder-only model's greedy "
                        "generation, timed token by token (TTFT, TPOT, tokens/s) with perplexity")
    p.add_argument("--prompt-lens", default="32,256", help="generate: comma-separated prompt lengths (default 32,256)")
    p.add_argument("--new-tokens", type=int, default=64, help="generate: tokens each generation makes (default 64)")
    p.add_argument("--generations", type=int, default=10, help="generate: timed generations per cell (default 10)")
    p.add_argument("--json", dest="json_out", help="write the results JSON to this file")
    p.add_argument("--submit", action="store_true",
                   help="only queue the study for a worker (`python -m engine worker`); prints its id last")
    p.add_argument("--machines", default=None, metavar="KINDS",
                   help="with --submit, for a Ray cluster: every cell once per machine kind, e.g. cpu-avx512,gpu-h100 "
                        "(cpu-FLAG, gpu-MODEL, node-NAME), run by `python -m engine worker --ray ADDRESS`")


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    from engine import plan, shared
    from engine.inspection import inspect_model
    from engine.report import source
    from engine.study import StudyRequest, release_study, run_study
    from engine.worker import new_worker_id
    from storage.db import session

    data_path = args.data
    label = Path(args.model).name
    if args.model == "demo-generate":
        from engine.generation.demo import build_generation_demo

        model_path, report = build_generation_demo()
        label = "demo decoder"
        print(f"demo: a {report['parameters']:,}-parameter Llama-style decoder trained offline, eval perplexity "
              f"{report['eval_perplexity']:.1f}", file=out)
    elif args.model == "demo":
        from engine.demo import build_demo

        model_path, demo_data, report = build_demo()
        data_path = data_path or str(demo_data)
        label = "demo digits CNN"
        print(f"demo: digits CNN, eval top-1 {report['eval_top1']:.3f} (trained offline on scikit-learn digits)",
              file=out)
    else:
        model_path = Path(args.model)
    if args.machines and not args.submit:
        raise UserError("--machines places cells on a Ray cluster's machines: add --submit, and run the study with "
                        "python -m engine worker --ray ADDRESS")
    # The study is this process's: a dashboard's worker sharing the database must not run (and so hide) its cells.
    owner = None if args.submit else new_worker_id()
    request = StudyRequest(
        None, variants=plan.split_variants(args.variants) if args.variants else None,
        runtimes=args.runtimes.split(",") if args.runtimes else None, batch_sizes=args.batch_sizes,
        warmup=args.warmup, iterations=args.iterations, min_seconds=args.min_seconds, rounds=args.rounds,
        threads=args.threads, timeout_s=args.timeout, eval_samples=args.eval_samples, runtime_options=args.option,
        memory_limit_mb=args.memory_limit, padding=args.padding, data_path=data_path, name=args.name,
        model_name=label, created_by=shared.cli_user(), owner=owner,
        scenario="generate" if args.model == "demo-generate" else args.scenario,
        prompt_lens=args.prompt_lens, new_tokens=args.new_tokens, generations=args.generations,
        machines=args.machines.split(",") if args.machines else None)
    request.check_arguments()  # a mistyped flag is said at once, before the model is opened
    # the user's files are opened in a child with time and memory limits, never in this process
    request.model = inspect_model(model_path, input_spec=args.input_spec, seq_len=args.seq_len)
    study_id, cells = request.submit()
    if owner is None:
        queued = sum(c.runnable for c in cells)
        print(f"queued {queued} of {len(cells)} cells; run them with: python -m engine worker", file=out)
        print(study_id, file=out)
        return 0
    try:
        view = LiveView(out)
        for cell in cells:
            if not cell.runnable:
                view.print_row(empty_row(cell))
        started = time.monotonic()
        run_study(study_id, events=view.events(), owner=owner)
        view.close()
        with session(write=False) as s:
            results = source.results_json(s, study_id)
    finally:
        release_study(study_id, owner)  # however bench ends, cells left queued become any worker's work
    # Rows and summary both come from the study's stored rows: every cell is shown and counted exactly once,
    # including any the worker never reported (cancelled from the dashboard, or left by a stop).
    rows = [CellResult.from_json(row) for row in results["results"]]
    for row in rows:
        if row.cell not in view.printed:
            view.print_row(row)
    for summary in dict.fromkeys(_inputs_summary(row) for row in rows):
        if summary:
            print(summary, file=out)  # the same for every cell: said once, not on each row
    if any(row.extra.get("generation") for row in rows):
        from engine.generation.table import generation_lines

        for line in generation_lines(rows, results["study"]["settings"]):
            print(line, file=out)
    by_cell = {row.cell: row for row in rows}
    timed = {row.paired.baseline_cell: row.paired.rounds for row in rows if row.paired and row.paired.rounds}
    for base_cell, count in timed.items():
        base = by_cell.get(base_cell)
        if base is not None:
            print(f"speedup: against cell {base_cell} ({base.variant} · {base.runtime} · b{base.batch_size}), "
                  f"timed alternately in {count} rounds; [95% interval]", file=out)
    counts = Counter(row.status for row in rows)
    ok, cancelled = counts[Status.OK], counts[Status.CANCELLED]
    left = counts[Status.QUEUED] + counts[Status.RUNNING]
    failed = sum(counts[s] for s in FAILED)
    skipped = sum(counts[s] for s in SKIPPED)
    extra = "".join(f", {n} {what}" for n, what in ((cancelled, "cancelled"), (left, "not run")) if n)
    print(f"study {study_id}: {len(rows)} cells ({ok} ok, {failed} failed, {skipped} n/a/unavailable{extra}) "
          f"in {time.monotonic() - started:.1f} s; report: python -m engine report {study_id} --format json "
          "--out FILE", file=out)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
        print(f"results JSON written to {args.json_out}", file=out)
    if left:
        print(f"stopped: {left} unfinished cell(s) go back to the queue for any worker (python -m engine worker)",
              file=sys.stderr)
        return 130
    return 0


def empty_row(cell: Any) -> CellResult:
    """The row of a cell that cannot run here (n/a, unavailable), with its reason."""
    return CellResult(cell=cell.index, variant=cell.variant, runtime=cell.runtime, batch_size=cell.batch_size,
                      status=Status(cell.status), error=cell.reason)


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """Build the demo and queue its study for a worker (the dashboard's worker runs it)."""
    from engine.study import start_demo
    from storage import queue
    from storage.db import session

    if args.if_empty:
        with session(write=False) as s:
            if queue.has_study(s):
                print("the database has studies already; no demo queued", file=out)
                return 0
    if args.generate:
        from engine.generation.demo import start_generation_demo

        print("building the generation demo: a small decoder trained offline (first time only)...", file=out,
              flush=True)
        study_id, report = start_generation_demo()
        print(f"demo decoder eval perplexity {report['eval_perplexity']:.1f}; study {study_id} queued for the worker",
              file=out)
        print(study_id, file=out)
        return 0
    print("building the demo: a CNN trained offline on scikit-learn's digits (first time only)...", file=out,
          flush=True)
    study_id, report = start_demo()
    print(f"demo model top-1 {report['eval_top1']:.3f}; study {study_id} queued for the worker", file=out)
    print(study_id, file=out)
    return 0


def cmd_worker(args: argparse.Namespace, out: TextIO) -> int:
    from engine.worker import Worker, ensure_local_worker

    if args.background:
        pid = ensure_local_worker()
        print(f"worker started in the background (pid {pid}); log: {data_dir() / 'logs' / 'worker.log'}"
              if pid else "a worker is already alive (or PARETOSCOPE_NO_AUTO_WORKER=1)", file=out)
        return 0
    address = args.ray or os.environ.get("PARETOSCOPE_RAY_ADDRESS")
    worker: Worker
    if address:
        from engine.ray_dispatch import RayDispatcher

        worker = RayDispatcher(address)
    else:
        worker = Worker()
    print(f"worker {worker.id} started; data folder {data_dir()}" + (f"; cells run on Ray ({address})" if address
                                                                      else ""), file=out, flush=True)
    done = worker.run(until_idle=args.until_idle, max_jobs=args.max_jobs)
    print(f"worker {worker.id} stopped after {done} job(s)", file=out)
    return 0


def cmd_worker_node(args: argparse.Namespace, out: TextIO) -> int:
    """This machine's `ray start` line with the resources its hardware and runtimes give (and, with --start, run it)."""
    import subprocess

    from engine.executors.ray_node import node_resources, shell_line, start_command

    address = args.address or os.environ.get("PARETOSCOPE_RAY_ADDRESS")
    if not args.head and not address:
        raise UserError("give the head's address (--address HOST:6379, or PARETOSCOPE_RAY_ADDRESS), or --head")
    command = start_command(address, node_resources(args.name), head=args.head)
    print(shell_line(command), file=out, flush=True)
    if not args.start:
        return 0
    if shutil.which("ray") is None:
        raise UserError("the `ray` command is not installed: pip install -r requirements-ray.txt")
    return subprocess.run(command, check=False).returncode


def cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    """What the stored diagnostics of one cell say, in plain lines (or JSON)."""
    from engine.report.source import load_report

    report = load_report(args.study_id)
    rows = {row["cell"]: CellResult.from_json(row) for row in report["results"]}
    row = rows.get(args.cell)
    if row is None:
        raise UserError(f"study {args.study_id} has cells {min(rows)}-{max(rows)}; pick one with --cell"
                        if rows else f"study {args.study_id} has no cells")
    if args.json:
        print(json.dumps({"cell": row.cell, "status": str(row.status), "diagnostics": row.diagnostics}, indent=1),
              file=out)
        return 0
    from engine.report.why import explain_lines

    for line in explain_lines(row, report.get("environment")):
        print(line, file=out)
    return 0


def cmd_deploy(args: argparse.Namespace, out: TextIO) -> int:
    """A measured cell as a bundle to serve elsewhere: FastAPI, Triton or Hugging Face Inference Endpoints."""
    from engine.deploy import load_deploy_cell, write_bundle
    from engine.deploy.write import check_target

    check_target(args.target)
    deployed = load_deploy_cell(args.study_id, args.cell)
    notes = write_bundle(deployed, args.target, Path(args.out))
    which = "the recommended " if deployed.recommended else ""
    print(f"{args.target} bundle of {which}{deployed.label} of study {args.study_id} written to {args.out}",
          file=out)
    for note in notes:
        print(f"note: {note}", file=out)
    return 0


def _add_serve_bench(sub: Any) -> None:
    p = sub.add_parser("serve-bench", help="measure a cell's FastAPI server under load: throughput and tail latency "
                                           "per concurrency level, with or without dynamic batching; a generation "
                                           "cell's streaming server: TTFT, TPOT, ITL, output tokens/s and goodput")
    p.add_argument("study_id", type=int, help="the study's id (the last line of `bench`, or the dashboard)")
    p.add_argument("--cell", type=int, default=None,
                   help="the cell's number (default: the recommended cell, as `deploy` picks it)")
    p.add_argument("--url", default=None,
                   help="a running server of the cell (e.g. http://127.0.0.1:8000) instead of starting its bundle here")
    p.add_argument("--concurrency", default="1,4,16",
                   help="comma-separated closed-loop levels: requests kept in flight (default 1,4,16)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level (default 10)")
    p.add_argument("--rate", default=None,
                   help="comma-separated open-loop levels: Poisson arrivals per second, latency from each request's "
                        "intended start (default: none)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="start the server with dynamic batching of up to this many samples (default: off)")
    p.add_argument("--max-delay-ms", type=float, default=None,
                   help="with --max-batch: how long a request waits for others (default 2 ms)")
    p.add_argument("--windows", type=int, default=5,
                   help="windows per level; stable when the last 3 agree within 10%% (default 5)")
    p.add_argument("--warmup", type=int, default=10, help="requests before each level, not recorded (default 10)")
    p.add_argument("--ttft-ms", type=float, default=None,
                   help="generation cells: goodput's time-to-first-token target in ms (a request meets it at or under)")
    p.add_argument("--tpot-ms", type=float, default=None,
                   help="generation cells: goodput's time-per-output-token target in ms (without either target, "
                        "goodput is not computed)")
    p.add_argument("--json", dest="json_out", help="also write the run as JSON to this file")


def _numbers(text: str | None, kind: Any, flag: str) -> tuple[Any, ...]:
    if not text:
        return ()
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, got '{text}'") from None


def cmd_serve_bench(args: argparse.Namespace, out: TextIO) -> int:
    """The cell's server under load; the run is stored as serving results of the cell."""
    from engine.deploy.serve_bench import ServeBenchConfig, serve_bench
    from engine.report.serving import batching_label

    try:
        config = ServeBenchConfig(
            args.study_id, cell=args.cell, url=args.url, concurrency=_numbers(args.concurrency, int, "--concurrency"),
            duration_s=args.duration, rates=_numbers(args.rate, float, "--rate"), max_batch=args.max_batch,
            max_delay_ms=args.max_delay_ms, windows=args.windows, warmup=args.warmup, ttft_ms=args.ttft_ms,
            tpot_ms=args.tpot_ms)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    run = serve_bench(config, progress=out)
    where = run["url"] or "its bundle started here"
    print(f"serving run {run['id']} of cell {run['cell']} of study {run['study']} ({where}, "
          f"{batching_label(run['max_batch'], run['max_delay_ms'])}) stored; the Serving page and the HTML report "
          "show it", file=out)
    if args.json_out:
        _write_text(Path(args.json_out), json.dumps(run, indent=1) + "\n")
        print(f"serving JSON written to {args.json_out}", file=out)
    return 0


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    from engine.report.source import load_report

    _check_report_args(args)
    report = load_report(args.study_id)
    if args.format == "space":
        return _write_space(args, report, out)
    if args.format == "json":
        text = json.dumps(report, indent=1)
    elif args.format == "csv":
        from engine.report.tables import csv_text

        text = csv_text(report)
    elif args.compare is not None:
        from engine.report.html import compare_html

        text = compare_html(report, load_report(args.compare))
    else:
        from engine.report.html import study_html

        text = study_html(report, _constraints(args, report))
    if not args.out:
        out.write(text if text.endswith("\n") else text + "\n")
        return 0
    _write_text(Path(args.out), text)
    what = f"comparison of studies {args.study_id} and {args.compare}" if args.compare is not None else (
        f"{args.format} report of study {args.study_id}")
    print(f"{what} written to {args.out}", file=out)
    return 0


def _check_report_args(args: argparse.Namespace) -> None:
    if args.compare is not None and args.format != "html":
        raise UserError("--compare makes an HTML comparison: add --format html")
    if args.push and args.format != "space":
        raise UserError("--push uploads a Space: add --format space")
    if args.push:
        from engine.report.space import check_repo_id

        check_repo_id(args.push)
    tuned = [name for name, value in (("--max-drop", args.max_drop), ("--max-p99", args.max_p99),
                                      ("--batch-size", args.batch_size)) if value is not None]
    if tuned and (args.format != "html" or args.compare is not None):
        raise UserError(f"{', '.join(tuned)}: only for a study's HTML report, whose recommended cell they choose; "
                        "use --format html without --compare")
    if args.max_drop is not None and not args.max_drop >= 0:
        raise UserError(f"--max-drop must be 0 or more, got {args.max_drop}")
    if args.max_p99 is not None and not args.max_p99 >= 0:
        raise UserError(f"--max-p99 must be 0 (no budget) or more, got {args.max_p99}")


def _constraints(args: argparse.Namespace, report: dict[str, Any]) -> Any:
    from engine.report.html import DEFAULT_MAX_DROP, default_constraints
    from engine.report.tables import results_table

    frame = results_table(report)
    if args.batch_size is not None:
        measured = sorted({int(r["batch_size"]) for r in report["results"] if r["status"] == Status.OK})
        if args.batch_size not in measured:
            raise UserError(f"--batch-size {args.batch_size} has no measured cell in study {args.study_id}; "
                            f"measured: {', '.join(map(str, measured)) or 'none'}")
    max_drop = DEFAULT_MAX_DROP if args.max_drop is None else args.max_drop
    return default_constraints(frame, max_drop, args.max_p99, args.batch_size)


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_space(args: argparse.Namespace, report: dict[str, Any], out: TextIO) -> int:
    from engine.report.space import push_space, write_space

    folder = Path(args.out or f"paretoscope-study-{args.study_id}-space")
    try:
        archive = write_space(report, folder)
    except OSError as exc:
        raise UserError(f"cannot write the Space folder {folder}: {exc.strerror or exc}") from None
    print(f"Space of study {args.study_id} written to {folder} and {archive}", file=out)
    if args.push:
        url = push_space(folder, args.push)
        print(f"pushed to {url}", file=out)
    return 0


def cmd_runtimes(args: argparse.Namespace, out: TextIO) -> int:
    from engine.runtimes import availability

    rows = availability()
    if args.json:
        print(json.dumps(rows, indent=1), file=out)
        return 0
    width = max(len(r["id"]) for r in rows)
    for r in rows:
        state = "available" if r["available"] else f"unavailable: {r['reason']}"
        print(f"{r['id']:<{width}}  {r['device']:<4}  {r['consumes']:<11}  {state}", file=out)
        if args.options:
            for key, meaning in r["options"].items():
                print(f"{'':<{width}}    --option {r['id']}.{key}=...  {meaning}", file=out)
    return 0


# --- live view --------------------------------------------------------------------------------

_COLUMNS = (("#", 3), ("variant", 22), ("runtime", 13), ("batch", 5), ("status", 11), ("p50 ms", 9),
            ("p99 ms", 9), ("items/s", 9), ("speedup", 20), ("load s", 7), ("cosine", 7), ("top1", 6),
            ("note", 0))


def _speedup(row: CellResult) -> str:
    """The cell's speedup over the baseline it was timed against in rounds, with its 95% interval."""
    paired = row.paired
    if paired is None or paired.speedup is None:
        return "-"
    ci = paired.ci95
    text = f"{paired.speedup:.2f}×"
    return text + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _inputs_summary(row: CellResult) -> str | None:
    made = row.inputs
    return made.get("summary") if isinstance(made, dict) else None


def format_row(row: CellResult) -> str:
    lat, fid = row.latency_ms, row.fidelity

    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    noisy = (row.noise or {}).get("message")  # said first: it decides how far to trust the row
    notes = [n for n in row.notes if n != _inputs_summary(row)]  # printed once after the rows
    note = row.error or "; ".join([*([noisy] if noisy else []), *notes])
    values = (str(row.cell), row.variant, row.runtime, str(row.batch_size), str(row.status),
              num(lat.p50 if lat else None, ".3f"), num(lat.p99 if lat else None, ".3f"),
              num(row.throughput_per_s, ".1f"), _speedup(row), num(row.load_s, ".2f"),
              num(fid.cosine if fid else None, ".4f"), num(row.task.value if row.task else None, ".3f"), note)
    return "  ".join(v if w == 0 else f"{v:<{w}}"[: max(w, len(v))] for v, (_, w) in zip(values, _COLUMNS, strict=True))


def header() -> str:
    return "  ".join(name if w == 0 else f"{name:<{w}}" for name, w in _COLUMNS)


class LiveView:
    """On a terminal: a live status line (cell i of n, phase, elapsed, ETA). Redirected: one line per cell."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.cell_started = self.started
        self.done_s: list[float] = []
        self.position = (0, 0)
        self.printed: set[int] = set()  # cell indexes with a row on screen
        print(header(), file=out, flush=True)

    def events(self) -> Any:
        from engine.worker import WorkerEvents

        return WorkerEvents(self._started, self._progress, self._finished)

    def _started(self, cell: Any, i: int, n: int) -> None:
        self.cell_started = time.monotonic()
        self.position = (i, n)
        self._status(cell, "starting", 0.0)  # only queued cells reach the worker

    def _progress(self, cell: Any, phase: str, fraction: float) -> None:
        self._status(cell, phase, fraction)

    def _status(self, cell: Any, phase: str, fraction: float) -> None:
        from engine.study import eta_s

        if not self.tty:
            return
        i, n = self.position
        elapsed = time.monotonic() - self.started
        remaining_cells = n - i
        eta = eta_s(self.done_s, remaining_cells)
        eta_text = f"ETA {eta:.0f}s" if eta is not None else "ETA -"
        line = (f"[{i + 1}/{n}] {cell.variant} × {cell.runtime} × b{cell.batch_size}: {phase} "
                f"{fraction * 100:.0f}%  elapsed {elapsed:.0f}s  {eta_text}")
        columns = shutil.get_terminal_size((100, 20)).columns
        self.out.write("\r\x1b[2K" + line[: columns - 1])
        self.out.flush()

    def _finished(self, cell: Any, row: CellResult, i: int, n: int) -> None:
        self.done_s.append(time.monotonic() - self.cell_started)
        self.print_row(row)

    def print_row(self, row: CellResult) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K")
        print(format_row(row), file=self.out, flush=True)
        if row.cell is not None:
            self.printed.add(row.cell)

    def close(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K")
            self.out.flush()


def _honour_ctrl_c() -> None:
    """Ctrl-C stops the command even when it inherited SIGINT ignored (a background job of a script, nohup'd
    shells): Python then installs no handler of its own, and a hanging model's intake could not be interrupted."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    _honour_ctrl_c()
    parser = argparse.ArgumentParser(prog="python -m engine", description="Paretoscope: benchmark optimized "
                                     "variants of a model on every runtime, with accuracy.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_bench(sub)
    p = sub.add_parser("runtimes", help="list runtimes and whether they are available here")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--options", action="store_true", help="also list each runtime's --option settings")
    p = sub.add_parser("demo", help="build the bundled demo and queue its study")
    p.add_argument("--if-empty", action="store_true", help="only when the database has no study yet")
    p.add_argument("--generate", action="store_true",
                   help="the generation demo instead: a small Llama-style decoder trained here (about a minute), "
                        "measured with --scenario generate")
    p = sub.add_parser("worker", help="run queued jobs from the database")
    p.add_argument("--until-idle", action="store_true", help="exit when no job is queued")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    p.add_argument("--background", action="store_true",
                   help="start one worker in the background unless one is alive (what `make run` and the "
                        "dashboard do), then return")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="dispatch cells to a Ray cluster (HOST:6379, or 'local' for a Ray instance on this machine) "
                        "instead of running them here (default: PARETOSCOPE_RAY_ADDRESS)")
    p = sub.add_parser("worker-node", help="print (or run, with --start) the `ray start` that joins this machine to a "
                                           "Ray cluster with the resources of its hardware and runtimes")
    p.add_argument("--address", help="the head's HOST:PORT (default: PARETOSCOPE_RAY_ADDRESS)")
    p.add_argument("--head", action="store_true", help="start the cluster's head on this machine")
    p.add_argument("--name", help="this node's name in paretoscope.node.NAME (default: the host name)")
    p.add_argument("--start", action="store_true", help="run the command instead of only printing it")
    p = sub.add_parser("report", help="write a study's results: HTML, CSV, JSON, or a Hugging Face Space")
    p.add_argument("study_id", type=int)
    p.add_argument("--format", choices=["html", "csv", "json", "space"], default="json",
                   help="html: one self-contained file with the Results page's charts; csv: one row per cell; "
                        "json: the results JSON with raw samples; space: a Hugging Face Space folder and its zip "
                        "(default json)")
    p.add_argument("--out", help="output file, or the Space's folder (default: standard output; for space "
                                 "./paretoscope-study-ID-space)")
    p.add_argument("--compare", type=int, metavar="STUDY_B",
                   help="with --format html: compare STUDY_B against STUDY_ID, as the Compare page does")
    p.add_argument("--max-drop", type=float, default=None,
                   help="html: largest accuracy drop against the baseline for the recommended cell (default 0.01)")
    p.add_argument("--max-p99", type=float, default=None, metavar="MS",
                   help="html: p99 budget in ms for the recommended cell (default: none; 0 = none)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="html: batch size of the recommendation and the Pareto chart (default: the smallest measured)")
    p.add_argument("--push", metavar="REPO_ID",
                   help="with --format space: upload the folder to the Hugging Face Space OWNER/NAME "
                        "(needs huggingface_hub and a token: hf auth login, or HF_TOKEN)")
    p = sub.add_parser("explain", help="why a cell measured what it did: quantization coverage, the hardware's verdict")
    p.add_argument("study_id", type=int, help="the study's id (the last line of `bench`, or the dashboard)")
    p.add_argument("--cell", type=int, required=True, help="the cell's number (the # column)")
    p.add_argument("--json", action="store_true", help="print the cell's diagnostics as JSON")
    p = sub.add_parser("deploy", help="write a measured cell as a bundle to serve: FastAPI, Triton or a Hugging Face "
                                      "Inference Endpoints handler")
    p.add_argument("study_id", type=int, help="the study's id (the last line of `bench`, or the dashboard)")
    p.add_argument("--cell", type=int, default=None,
                   help="the cell's number (the # column; default: the recommended cell, as the Results page picks it)")
    p.add_argument("--target", required=True, help="fastapi, triton or hf-endpoint")
    p.add_argument("--out", required=True, help="the bundle's folder: new, empty, or a previous bundle to replace")
    _add_serve_bench(sub)
    args = parser.parse_args(argv)
    commands = {"bench": cmd_bench, "runtimes": cmd_runtimes, "demo": cmd_demo, "worker": cmd_worker,
                "report": cmd_report, "explain": cmd_explain, "deploy": cmd_deploy,
                "worker-node": cmd_worker_node}
    commands["serve-bench"] = cmd_serve_bench
    try:
        return commands[args.command](args, out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
