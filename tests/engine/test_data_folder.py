"""The data folder as a user has it: `PARETOSCOPE_DATA_DIR` unset, the tool started from some directory.

Children run in scratch folders and the auto-started worker in the project folder; each must use the
folder the parent resolved, or what they write lands where it is deleted (or lost).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.executors.local import child_env
from storage import paths

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--iterations", "5", "--min-seconds", "0.05", "--warmup", "1", "--threads", "1", "--timeout", "300",
        "--rounds", "0"]


def _user_env() -> dict[str, str]:
    # a user's shell: no data folder variable, no PYTHONPATH (the package is installed)
    return {k: v for k, v in os.environ.items() if k not in (paths.ENV, "PYTHONPATH")}


def _engine(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=cwd,
                          env=_user_env(), timeout=600, check=False)


def test_the_default_folder_is_resolved_once_and_handed_to_children(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ENV)
    monkeypatch.setattr(paths, "_RESOLVED", {})
    monkeypatch.chdir(tmp_path)
    first = paths.data_dir()
    assert first == tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert paths.data_dir() == first  # a later change of directory does not move it
    assert child_env()[paths.ENV] == str(first)


def test_cli_bench_from_another_directory_keeps_models_and_variants_in_the_data_folder(
        tmp_path: Path, mlp_onnx: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    out = user / "results.json"
    done = _engine(user, "bench", str(mlp_onnx), "--variants", "baseline,int8-dynamic", "--runtimes", "onnxruntime",
                   "--batch-sizes", "1", *FAST, "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert [r["status"] for r in results["results"]] == ["ok", "ok"]
    data = user / "data"
    variant = Path(next(r["variant_path"] for r in results["results"] if r["variant"] == "int8-dynamic"))
    assert variant.is_file() and variant.is_relative_to(data / "variants"), variant
    assert not list((data / "tmp").glob("*")), "a scratch folder outlived its child"
    assert (data / "models" / results["study"]["model"]["sha256"]).is_dir()


def test_a_model_file_missing_from_the_data_folder_is_said_plainly(tmp_path: Path, mlp_onnx: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    first = _engine(user, "bench", str(mlp_onnx), "--variants", "baseline", "--runtimes", "onnxruntime",
                    "--batch-sizes", "1", *FAST, "--submit")
    assert first.returncode == 0, first.stderr
    for folder in (user / "data" / "models").iterdir():
        shutil.rmtree(folder)
    ran = _engine(user, "worker", "--until-idle")
    assert ran.returncode == 0, ran.stderr
    report = user / "report.json"
    done = _engine(user, "report", "1", "--format", "json", "--out", str(report))
    assert done.returncode == 0, done.stderr
    row = json.loads(report.read_text())["results"][0]
    assert row["status"] == "failed"
    assert "the model's file is missing from the data folder" in row["error"]
    assert "upload it again" in row["error"]
    assert str(user / "data" / "models") in row["error"]


def test_a_background_worker_started_from_another_directory_serves_that_data_folder(tmp_path: Path) -> None:
    """`make run` starts the worker with the app (`worker --background`); the worker runs in the project folder
    and must heartbeat into the database of the folder the command resolved, not the project's ./data."""
    import psutil
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    user = tmp_path / "user"
    user.mkdir()
    env = {k: v for k, v in _user_env().items() if k != "PARETOSCOPE_NO_AUTO_WORKER"}
    done = subprocess.run([sys.executable, "-m", "engine", "worker", "--background"], capture_output=True, text=True,
                          cwd=user, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    pid = int((user / "data" / "locks" / "auto-worker.pid").read_text())
    worker = psutil.Process(pid)
    try:
        database = create_engine(f"sqlite:///{user / 'data' / 'paretoscope.db'}")
        beat = None
        for _ in range(600):  # its first heartbeat: the interpreter and imports take a few seconds
            try:
                with database.connect() as conn:
                    beat = conn.execute(text("SELECT pid FROM workers WHERE pid = :pid"), {"pid": pid}).scalar()
            except OperationalError:  # the worker has not created the schema yet
                beat = None
            assert worker.is_running(), (user / "data" / "logs" / "worker.log").read_text()
            if beat:
                break
            time.sleep(0.5)
        assert beat == pid
    finally:
        worker.terminate()
        worker.wait(30)


def test_uploading_the_same_bytes_again_restores_a_missing_model_file(mlp_onnx: Path, data_dir: Path) -> None:
    from engine.artifacts import intake

    first = intake(mlp_onnx)
    first.path.unlink()  # the folder and its record stay, the model file is gone
    again = intake(mlp_onnx)
    assert again.path == first.path and again.path.is_file()
