"""Dashboard noise: one cell's p50 from the CLI with the dashboard closed against the same with it open in a tab.

The cell is a small ONNX CNN (harness_overhead.py's: 3 convolutions on 3x128x128, ~2 ms a call) or, with
`--model demo`, the demo digits CNN (~0.04 ms, where run-to-run drift outweighs any load), on `onnxruntime`,
baseline, batch 1, run exactly as a user runs it: `python -m engine bench MODEL --runtimes onnxruntime
--variants baseline --batch-sizes 1 --json ...` in a scratch data folder. "Open" means `streamlit run app.py`
with the shipped .streamlit/config.toml on that same data folder (PARETOSCOPE_NO_AUTO_WORKER=1: its worker
must not race the CLI for the cell) and one headless chromium tab on its Home page, driven by Playwright.
Rounds alternate closed/open, the order flipped every round.
Target: median open p50 / median closed p50 <= 1.03. Each run's `machine_load` and `noise` are reported too,
with the CPU that this script's own dashboard (server, browser, Playwright driver) used during the run.

    .venv/bin/python -m benchmarks.dashboard_noise [--model cnn|demo] [--rounds 3] [--threads N] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import ROOT, command_line, data_folder, load_state, table, write_json
from benchmarks.harness_overhead import make_cnn

TARGET = 1.03
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Seconds between the page being drawn and the run starting: the first render (imports, queries, the browser
# laying out the page) is a one-off; what is measured is a dashboard left open, as a user leaves it.
SETTLE_S = 3.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:  # a renderer that went away; its share is lost
            continue
        total += times.user + times.system
    return total


def _streamlit() -> list[str]:
    script = Path(sys.executable).parent / "streamlit"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "streamlit"]


@contextlib.contextmanager
def dashboard_open(page_path: str, log: Path) -> Iterator[dict[str, Any]]:
    """`streamlit run app.py` from the project (its shipped config) and one headless tab on it, until exit."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    port = _free_port()
    env = {**os.environ, "PARETOSCOPE_NO_AUTO_WORKER": "1"}
    with open(log, "ab") as out:
        server = subprocess.Popen([*_streamlit(), "run", "app.py", "--server.port", str(port),
                                   "--server.address", "127.0.0.1"], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the dashboard did not start; see {log}") from None
                time.sleep(0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            tab = browser.new_page(viewport={"width": 1300, "height": 900})
            tab.set_default_timeout(60_000)
            tab.goto(f"http://127.0.0.1:{port}/{page_path}")
            tab.locator("[data-testid=stSidebarNav]").wait_for()
            tab.get_by_text("Data folder:").wait_for()  # the sidebar is drawn: app.py ran to the end
            time.sleep(SETTLE_S)
            # the server, the Playwright driver and chromium: every process this script started so far
            stack = psutil.Process().children(recursive=True)
            yield {"server_pid": server.pid, "port": port, "processes": stack}
            browser.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def bench(model: str, folder: Path, cli_args: list[str], log: Path) -> dict[str, Any]:
    """One CLI run of the cell; returns its result row."""
    out_json = folder / "bench-result.json"
    cmd = [sys.executable, "-m", "engine", "bench", model, "--runtimes", "onnxruntime", "--variants", "baseline",
           "--batch-sizes", "1", *cli_args, "--json", str(out_json)]
    with open(log, "ab") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the CLI failed ({done.returncode}); see {log}")
    (row,) = json.loads(out_json.read_text())["results"]
    if row["status"] != "ok":
        raise SystemExit(f"the cell ended {row['status']}: {row.get('error')}")
    return row


def summary(row: dict[str, Any], dashboard: str, round_: int) -> dict[str, Any]:
    load, verdict = row.get("machine_load") or {}, row.get("noise") or {}
    return {"round": round_, "dashboard": dashboard, "p50_ms": row["latency_ms"]["p50"],
            "p50_ci95": row.get("p50_ci95") or row["latency_ms"].get("p50_ci95"),
            "iterations": row.get("iterations") or row["latency_ms"].get("iterations"),
            "machine_load": load, "noise": verdict}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["cnn", "demo"], default="cnn", help="the cell's model (default cnn)")
    parser.add_argument("--rounds", type=int, default=3, help="closed/open pairs (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="threads for the cell (default: all cores)")
    parser.add_argument("--min-seconds", type=float, default=None, help="minimum timed seconds (default: the CLI's, 2)")
    parser.add_argument("--page", default="", help="dashboard page kept open, e.g. results (default: Home)")
    parser.add_argument("--data-dir", help="keep the engine's data folder here (default: a scratch folder)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/dashboard_noise.json)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    cli_args = [*(["--threads", str(args.threads)] if args.threads else []),
                *(["--min-seconds", str(args.min_seconds)] if args.min_seconds is not None else [])]

    from engine.measure.environment import collect

    started = time.monotonic()
    load_before = load_state()
    runs: list[dict[str, Any]] = []
    with data_folder(args.data_dir) as folder:
        log = folder / "dashboard_noise.log"
        model = "demo" if args.model == "demo" else str(make_cnn(folder))
        print("warm-up run (builds the model and the variant; not counted) ...", flush=True)
        bench(model, folder, cli_args, log)
        for r in range(args.rounds):
            for kind in ("closed", "open") if r % 2 == 0 else ("open", "closed"):
                with dashboard_open(args.page, log) if kind == "open" else contextlib.nullcontext() as server:
                    stack = server["processes"] if server else []
                    cpu0, t0 = _cpu_s(stack), time.monotonic()
                    row = bench(model, folder, cli_args, log)
                    runs.append(summary(row, kind, r + 1))
                    runs[-1]["own_dashboard"] = {
                        "server_pid": server["server_pid"], "pids": [p.pid for p in stack],
                        "cpu_s": _cpu_s(stack) - cpu0, "run_s": time.monotonic() - t0} if server else None
                run = runs[-1]
                print(f"round {r + 1}, dashboard {kind}: p50 {run['p50_ms']:.4f} ms, "
                      f"{run['noise'].get('message') or 'not noisy'}", flush=True)
    load_after = load_state()

    closed = [x["p50_ms"] for x in runs if x["dashboard"] == "closed"]
    opened = [x["p50_ms"] for x in runs if x["dashboard"] == "open"]
    ratio = statistics.median(opened) / statistics.median(closed)
    per_round = [o / c for o, c in zip(opened, closed, strict=True)]

    def busiest(load: dict[str, Any]) -> str:
        return ", ".join(f"{b['name']} {b['cpu_s']:.2f}" for b in load.get("busiest") or []) or "-"

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print()
    print(table(
        ["round", "dashboard", "p50 ms", "±spread %", "cv p99", "other busy cores", "streamlit cpu s",
         "our dashboard cores", "load 1m", "busiest (cpu s)", "noisy"],
        [[x["round"], x["dashboard"], f"{x['p50_ms']:.4f}", num(x["noise"].get("spread_pct"), ".1f"),
          num(x["noise"].get("cv_p99"), ".2f"), num(x["machine_load"].get("other_busy_cores"), ".2f"),
          num(x["machine_load"].get("dashboard_cpu_s"), ".2f"),
          num(x["own_dashboard"]["cpu_s"] / x["own_dashboard"]["run_s"] if x["own_dashboard"] else None, ".3f"),
          f"{num(x['machine_load'].get('loadavg_before'), '.2f')}→{num(x['machine_load'].get('loadavg_after'), '.2f')}",
          busiest(x["machine_load"]), "yes" if x["noise"].get("noisy") else "no"] for x in runs],
    ))
    print(f"\nmedian p50: closed {statistics.median(closed):.4f} ms, open {statistics.median(opened):.4f} ms; "
          f"open / closed {ratio:.3f} (target <= {TARGET}: {'met' if ratio <= TARGET else 'MISSED'}); "
          f"per round {', '.join(f'{p:.3f}' for p in per_round)}")
    # the yardstick for that ratio: how far runs with the same setting drift apart with nothing else changed
    drift = max(closed) / min(closed)
    print(f"closed runs alone span {min(closed):.4f}-{max(closed):.4f} ms (x{drift:.3f}); a ratio inside that "
          "span is run-to-run drift, not the dashboard")
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    print(f"{args.model} cell on onnxruntime, {args.rounds} alternating rounds; streamlit fileWatcherType "
          f"{config.get('server', {}).get('fileWatcherType')!r}; {load_before} before, {load_after} after")
    payload = {
        "benchmark": "dashboard_noise",
        "target": {"max_open_over_closed": TARGET},
        "ratio": ratio, "within_target": ratio <= TARGET, "round_ratios": per_round,
        "closed_drift": max(closed) / min(closed),
        "closed_p50_ms": closed, "open_p50_ms": opened,
        "settings": {"model": args.model, "runtime": "onnxruntime", "variant": "baseline", "batch_size": 1,
                     "rounds": args.rounds, "cli_args": cli_args, "page": args.page or "home",
                     "streamlit_config": config, "settle_s": SETTLE_S},
        "runs": runs,
        "machine_load": {"before": load_before, "after": load_after},
        "environment": collect(args.threads),
        "command": command_line(),
        "wall_s": time.monotonic() - started,
    }
    path = write_json(payload, args.out, "dashboard_noise")
    print(f"results JSON written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
