"""`python -m engine`: bench end to end over every format and the demo, runtimes listing, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
# rounds off: these tests are about the CLI, not speedups (test_rounds and the report/page fixtures run them)
FAST = ["--iterations", "5", "--min-seconds", "0.05", "--warmup", "1", "--threads", "1", "--timeout", "300",
        "--rounds", "0"]
RESULT_KEYS = {"variant", "runtime", "batch_size", "status", "error", "latency_ms", "throughput_per_s", "load_s",
               "first_run_ms", "peak_host_mb", "peak_device_mb", "model_size_mb", "accuracy", "settings", "notes"}


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600, check=False)


def bench(tmp_path: Path, model: str | Path, *args: str) -> dict:  # type: ignore[type-arg]
    out_json = tmp_path / "results.json"
    out = io.StringIO()
    code = main(["bench", str(model), *FAST, *args, "--json", str(out_json)], out=out)
    assert code == 0, out.getvalue()
    results = json.loads(out_json.read_text())
    assert {"study", "environment", "results"} <= set(results)
    for row in results["results"]:
        assert RESULT_KEYS <= set(row), set(RESULT_KEYS) - set(row)
    return results


def by_cell(results: dict) -> dict[tuple[str, str, int], dict]:  # type: ignore[type-arg]
    return {(r["variant"], r["runtime"], r["batch_size"]): r for r in results["results"]}


def test_runtimes_json_lists_gpu_runtimes_unavailable_with_reasons(data_dir: Path) -> None:
    proc = cli("runtimes", "--json", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    rows = {r["id"]: r for r in json.loads(proc.stdout)}
    for rid in ("torch", "torch-compile", "torchscript", "onnxruntime", "openvino"):
        assert rows[rid]["available"], rows[rid]
    for rid in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        assert rows[rid]["available"] is False
        assert rows[rid]["reason"]


def test_bench_onnx_with_labels_records_every_field(tmp_path: Path, mlp_onnx: Path, mlp_npz: Path) -> None:
    results = bench(tmp_path, mlp_onnx, "--variants", "baseline,int8-dynamic,int8-static",
                    "--runtimes", "onnxruntime,torch", "--batch-sizes", "1,4", "--data", str(mlp_npz))
    cells = by_cell(results)
    assert len(cells) == 12
    base = cells[("baseline", "onnxruntime", 4)]
    assert base["status"] == "ok", base
    lat = base["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["iterations"] >= 5
    assert base["throughput_per_s"] == pytest.approx(4 * 1000 / lat["mean"], rel=1e-6)
    fid = base["accuracy"]["fidelity"]
    assert fid["cosine"] == pytest.approx(1.0, abs=1e-6) and fid["max_abs"] < 1e-5
    assert fid["top1_agreement"] == 1.0
    assert base["accuracy"]["task"]["name"] == "top1"
    assert base["settings"]["threads"] == 1
    assert base["peak_host_mb"] > 10 and base["model_size_mb"] > 0
    assert base["load_s"] >= 0 and base["first_run_ms"] > 0
    static = cells[("int8-static", "onnxruntime", 1)]
    assert static["status"] == "ok", static
    assert any("calib split" in n for n in static["notes"])
    # an ONNX model cannot run on a torch runtime: n/a rows with the reason, nothing silently dropped
    torch_row = cells[("baseline", "torch", 1)]
    assert torch_row["status"] == "n/a" and "ONNX" in torch_row["error"]
    assert results["study"]["progress"] == {"ok": 6, "n/a": 6}
    report = tmp_path / "report.json"
    assert main(["report", str(results["study"]["id"]), "--format", "json", "--out", str(report)],
                out=io.StringIO()) == 0
    stored = by_cell(json.loads(report.read_text()))
    assert stored[("baseline", "onnxruntime", 4)]["latency_ms"] == lat
    samples = stored[("baseline", "onnxruntime", 4)]["samples_ms"]
    assert len(samples) == lat["iterations"]
    assert np.median(samples) == pytest.approx(lat["p50"], rel=1e-3)  # float32 storage of the raw samples


@pytest.mark.slow
def test_bench_torchscript_pt2_and_hf(tmp_path: Path, mlp_torchscript: Path, mlp_pt2: Path,
                                      bert_hf_zip: Path) -> None:
    ts = by_cell(bench(tmp_path, mlp_torchscript, "--variants", "baseline", "--runtimes", "torchscript,onnxruntime"))
    assert ts[("baseline", "torchscript", 1)]["status"] == "ok"
    onnx_row = ts[("baseline", "onnxruntime", 1)]
    assert onnx_row["status"] == "ok", onnx_row
    assert onnx_row["accuracy"]["fidelity"]["max_abs"] < 1e-4
    assert any("legacy" in n for n in onnx_row["notes"])

    pt2 = by_cell(bench(tmp_path, mlp_pt2, "--variants", "baseline", "--runtimes", "torch,openvino"))
    assert pt2[("baseline", "torch", 1)]["status"] == "ok"
    assert pt2[("baseline", "openvino", 1)]["status"] == "ok"
    assert pt2[("baseline", "openvino", 1)]["accuracy"]["fidelity"]["cosine"] > 0.9999

    hf = by_cell(bench(tmp_path, bert_hf_zip, "--variants", "baseline,int8-dynamic", "--runtimes",
                       "torch,onnxruntime", "--seq-len", "16", "--eval-samples", "8"))
    for key in [("baseline", "torch", 1), ("baseline", "onnxruntime", 1), ("int8-dynamic", "torch", 1),
                ("int8-dynamic", "onnxruntime", 1)]:
        assert hf[key]["status"] == "ok", hf[key]
    assert hf[("baseline", "onnxruntime", 1)]["accuracy"]["fidelity"]["cosine"] > 0.9999
    assert hf[("int8-dynamic", "onnxruntime", 1)]["accuracy"]["fidelity"]["cosine"] > 0.9


@pytest.mark.slow
def test_bench_demo_reaches_the_promised_accuracy(tmp_path: Path) -> None:
    results = bench(tmp_path, "demo", "--variants", "baseline,int8-static", "--runtimes", "onnxruntime",
                    "--batch-sizes", "32")
    cells = by_cell(results)
    base = cells[("baseline", "onnxruntime", 32)]
    assert base["status"] == "ok", base
    assert base["accuracy"]["task"]["value"] >= 0.95
    static = cells[("int8-static", "onnxruntime", 32)]
    assert static["status"] == "ok", static
    assert static["accuracy"]["task"]["value"] >= 0.9
    assert static["accuracy"]["fidelity"]["top1_agreement"] >= 0.95

    # `make run` queues the demo study only on an empty database; the model is built once and reused
    out = io.StringIO()
    assert main(["demo", "--if-empty"], out=out) == 0
    assert "no demo queued" in out.getvalue()
    out = io.StringIO()
    assert main(["demo"], out=out) == 0
    study_id = int(out.getvalue().strip().splitlines()[-1])
    from storage import views
    from storage.db import session

    with session(write=False) as s:
        progress = views.study_progress(s, study_id)
    assert progress["queued"] == 14 and progress["n/a"] == 4  # torch has no int8-static and no CPU fp16


def test_fixed_batch_model_marks_other_batch_sizes_na(tmp_path: Path, mlp_onnx_fixed: Path) -> None:
    cells = by_cell(bench(tmp_path, mlp_onnx_fixed, "--variants", "baseline", "--runtimes", "onnxruntime",
                          "--batch-sizes", "1,8"))
    assert cells[("baseline", "onnxruntime", 1)]["status"] == "ok"
    assert cells[("baseline", "onnxruntime", 8)]["status"] == "n/a"
    assert "fixes its batch size" in cells[("baseline", "onnxruntime", 8)]["error"]


def test_redirected_output_prints_one_line_per_cell(tmp_path: Path, mlp_onnx: Path, data_dir: Path) -> None:
    proc = cli("bench", str(mlp_onnx), *FAST, "--variants", "baseline,fp16", "--runtimes", "onnxruntime,torch",
               data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    cell_lines = [ln for ln in lines if ln.split()[0].isdigit()]
    assert len(cell_lines) == 4
    assert "\r" not in proc.stdout and "\x1b" not in proc.stdout
    assert "study " in lines[-1]


# --- bad input: one line, exit 2, no traceback, nothing outside the data folder ----------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _bad_inputs(tmp: Path, mlp_onnx: Path) -> dict[str, tuple[list[str], str]]:
    truncated = tmp / "truncated.onnx"
    truncated.write_bytes(mlp_onnx.read_bytes()[: mlp_onnx.stat().st_size // 2])
    unknown = tmp / "weights.onnx"
    unknown.write_bytes(b"\x00\x01garbage" * 100)
    renamed = _zip(tmp / "renamed.onnx", {"readme.txt": b"hello"})
    slip = _zip(tmp / "slip.zip", {"../evil.onnx": mlp_onnx.read_bytes()})
    pickle_pt = tmp / "model.pt"
    pickle_pt.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)
    hf_bin = _zip(tmp / "hf.zip", {"m/config.json": b"{}", "m/pytorch_model.bin": b"\x80\x04"})
    bomb = tmp / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("m/config.json", b"{}")
        archive.writestr("m/model.safetensors", b"\x00" * (64 * 2**20))
    npz = tmp / "objects.npz"
    np.savez(npz, x=np.array([{"a": 1}], dtype=object))
    return {
        "unknown format": ([str(unknown)], "unknown model format"),
        "truncated onnx": ([str(truncated)], "not a valid ONNX model"),
        "zip renamed .onnx": ([str(renamed)], "holds no model"),
        "zip-slip": ([str(slip)], "outside the archive"),
        "pickle .pt": ([str(pickle_pt)], "pickle"),
        "hf with .bin only": ([str(hf_bin)], "safetensors"),
        "zip bomb": ([str(bomb)], "unpacks to more than"),
        "npz with objects": ([str(mlp_onnx), "--data", str(npz)], "Python objects"),
        "spec mismatch": ([str(mlp_onnx), "--input-spec", "x:float32[B,3,8]"], "rank"),
        "bad variant": ([str(mlp_onnx), "--variants", "prune-magic:2"], "unknown optimization"),
        "missing file": ([str(tmp / "nope.onnx")], "no such file"),
        # flags are checked before the model is opened (a limited child, seconds): a missing file does not hide them
        "bad flag before the model": ([str(tmp / "nope.onnx"), "--batch-sizes", "x"], "--batch-sizes 'x'"),
        "bad variant before the model": ([str(tmp / "nope.onnx"), "--variants", "prune-magic:2"],
                                        "unknown optimization"),
        "misspelt option": ([str(mlp_onnx), "--option", "onnxruntime.graph_level=basic"],
                            "onnxruntime has no option 'graph_level'"),
        "option for a runtime not run": ([str(mlp_onnx), "--runtimes", "onnxruntime", "--option",
                                          "openvino.inference_precision=f16"], "which this study does not run"),
    }


def test_bad_inputs_give_one_line_errors(tmp_path: Path, mlp_onnx: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    data_dir = tmp_path / "data-bad"
    cases = _bad_inputs(inputs, mlp_onnx)
    before = {p.name for p in tmp_path.iterdir()} | {p.name for p in inputs.iterdir()}
    env_extra = {"PARETOSCOPE_MAX_UNPACKED_BYTES": str(16 * 2**20)}
    for case, (args, expected) in cases.items():
        env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(data_dir), **env_extra}
        proc = subprocess.run([sys.executable, "-m", "engine", "bench", *args, *FAST], capture_output=True,
                              text=True, cwd=ROOT, env=env, timeout=300, check=False)
        assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, (case, proc.stderr)
        assert lines[0].startswith("error: "), (case, lines)
        assert expected.lower() in lines[0].lower(), (case, lines[0])
        assert "Traceback" not in proc.stderr
    after = {p.name for p in tmp_path.iterdir()} | {p.name for p in inputs.iterdir()}
    assert after - before <= {"data-bad"}, after - before
    assert not (inputs.parent / "evil.onnx").exists() and not (tmp_path.parent / "evil.onnx").exists()
    models = data_dir / "models"
    leftovers = [p.name for p in models.iterdir()] if models.exists() else []
    assert all(not name.startswith(".") for name in leftovers), leftovers
    assert not (data_dir / "studies").exists() or not any((data_dir / "studies").iterdir())
    assert not (data_dir / "paretoscope.db").exists()  # nothing recorded for a refused input


def test_terminal_output_shows_live_progress(tmp_path: Path, mlp_onnx: Path, data_dir: Path) -> None:
    """On a terminal a status line (cell i of n, phase, elapsed, ETA) is redrawn in place."""
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "bench", str(mlp_onnx), *FAST, "--min-seconds", "0.5",
                             "--variants", "baseline,int8-dynamic", "--runtimes", "onnxruntime"],
                            stdout=follower, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=300)
    os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "\r\x1b[2K" in text
    assert "[1/2] baseline × onnxruntime × b1" in text and "ETA" in text and "measuring" in text


def test_zero_threads_or_memory_is_refused_not_replaced_by_the_default(tmp_path: Path, mlp_onnx: Path) -> None:
    for flag, value, expected in (("--threads", "0", "--threads must be at least 1, got 0"),
                                  ("--memory-limit", "0", "--memory-limit must be at least 64 MB, got 0")):
        proc = cli("bench", str(mlp_onnx), flag, value, data_dir=tmp_path / "data")
        assert proc.returncode == 2 and proc.stderr.strip() == f"error: {expected}", proc.stderr


# --- a bench study is the bench's own: a dashboard's worker on the same database leaves it be ------------


def _printed_cells(text: str) -> list[int]:
    """The cell index of each row printed (rows start with their cell number; the header with '#')."""
    return [int(line.split()[0]) for line in text.splitlines() if line.split() and line.split()[0].isdigit()]


def _wait_for(predicate: Any, what: str, timeout: float = 300) -> None:
    """Poll the database for a state; the limit only stops a broken run, it never paces a passing one."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_bench_runs_and_prints_every_cell_beside_a_dashboard_worker(tmp_path: Path, mlp_onnx: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import select

    from engine import worker as worker_module
    from storage.db import session
    from storage.tables import Job, Study, Worker

    out = io.StringIO()
    assert main(["bench", str(mlp_onnx), *FAST, "--variants", "baseline", "--runtimes", "onnxruntime", "--submit"],
                out=out) == 0
    foreign = int(out.getvalue().split()[-1])

    def foreign_job() -> Job:
        with session(write=False) as s:
            return s.scalars(select(Job).where(Job.study_id == foreign)).one()

    # the dashboard's worker: a general one, started first and seen claiming work before bench submits
    general = subprocess.Popen([sys.executable, "-m", "engine", "worker"], cwd=ROOT, env=dict(os.environ),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    owners: list[str] = []
    make_id = worker_module.new_worker_id
    monkeypatch.setattr(worker_module, "new_worker_id", lambda: owners.append(make_id()) or owners[-1])
    try:
        _wait_for(lambda: foreign_job().worker_id is not None, "the general worker to claim the queued study")
        out_json = tmp_path / "bench.json"
        out = io.StringIO()
        code = main(["bench", str(mlp_onnx), *FAST, "--variants", "baseline", "--runtimes", "onnxruntime,torch",
                     "--batch-sizes", "1,2,4", "--json", str(out_json)], out=out)
        assert code == 0, out.getvalue()
        _wait_for(lambda: foreign_job().status == "ok", "the general worker to finish the queued study")
    finally:
        general.send_signal(signal.SIGTERM)
        general_out, general_err = general.communicate(timeout=120)
    assert general.returncode == 0, general_err
    assert "stopped after 1 job(s)" in general_out  # the queued study's one cell, none of bench's

    study_id = json.loads(out_json.read_text())["study"]["id"]
    text = out.getvalue()
    assert sorted(_printed_cells(text)) == list(range(6))  # 3 measured, 3 n/a (ONNX on torch), each once
    summary = [line for line in text.splitlines() if line.startswith(f"study {study_id}: ")]
    assert len(summary) == 1 and "6 cells (3 ok, 0 failed, 3 n/a/unavailable) in " in summary[0], text
    [owner] = owners
    with session(write=False) as s:
        ran = [job for job in s.scalars(select(Job).where(Job.study_id == study_id)) if job.status != "n/a"]
        assert [(job.status, job.worker_id, job.attempts) for job in ran] == [("ok", owner, 1)] * 3
        study = s.get(Study, study_id)
        assert study is not None and study.owner is None  # released at the end
        owner_row, general_row = s.get(Worker, owner), s.get(Worker, foreign_job().worker_id)
        assert owner_row is not None and owner_row.pid == os.getpid()
        assert general_row is not None and general_row.pid == general.pid


def test_bench_stopped_by_sigterm_gives_its_cells_back_to_the_queue(mlp_onnx: Path, data_dir: Path) -> None:
    from sqlalchemy import select

    from storage import queue

    from storage.db import session
    from storage.tables import Job, Study

    def statuses() -> list[str]:
        with session(write=False) as s:
            return list(s.scalars(select(Job.status).order_by(Job.cell)))

    # a minute per cell: the stop always lands while cells are left, however slow the machine
    proc = subprocess.Popen([sys.executable, "-m", "engine", "bench", str(mlp_onnx), *FAST, "--min-seconds", "60",
                             "--variants", "baseline", "--runtimes", "onnxruntime", "--batch-sizes", "1,2,4"],
                            cwd=ROOT, env={**os.environ, "PARETOSCOPE_DATA_DIR": str(data_dir)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: "running" in statuses(), "bench to start its first cell")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "stopped: 3 unfinished cell(s) go back to the queue" in err
    assert sorted(_printed_cells(out)) == [0, 1, 2]
    assert "3 cells (0 ok, 0 failed, 0 n/a/unavailable, 3 not run)" in out
    assert statuses() == ["queued"] * 3  # the running cell was requeued, not counted as an attempt
    with session() as s:
        study = s.scalars(select(Study)).one()
        assert study.owner is None
        job = queue.claim_job(s, "general", lease_s=60)
        assert job is not None and job.study_id == study.id and job.attempts == 1


def test_bench_that_raises_releases_its_study(mlp_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.study
    from storage import queue
    from storage.db import session

    def broken(study_id: int, events: Any = None, *, owner: str | None = None) -> None:
        with session(write=False) as s:
            study = queue.get_study(s, study_id)
            assert study is not None and owner is not None and study.owner == owner
        raise RuntimeError("the worker broke")

    monkeypatch.setattr(engine.study, "run_study", broken)
    with pytest.raises(RuntimeError, match="the worker broke"):
        main(["bench", str(mlp_onnx), *FAST, "--variants", "baseline", "--runtimes", "onnxruntime"], out=io.StringIO())
    with session() as s:
        job = queue.claim_job(s, "general", lease_s=60)
        assert job is not None and job.study.owner is None


def test_a_noisy_row_says_so_first() -> None:
    from engine.__main__ import format_row
    from engine.results import CellResult

    row = {"cell": 0, "variant": "baseline", "runtime": "onnxruntime", "batch_size": 1, "status": "ok",
           "latency_ms": {"p50": 1.0, "p99": 2.0}, "notes": ["a note"],
           "noise": {"noisy": True, "message": "noisy: ±12% — rerun on an idle machine"}}
    assert format_row(CellResult.from_json(row)).endswith("noisy: ±12% — rerun on an idle machine; a note")
    steady = CellResult.from_json({**row, "noise": {"noisy": False, "message": None}})
    assert format_row(steady).endswith("  a note")
