"""Shared-server mode (PARETOSCOPE_SHARED=1): code-carrying formats refused on every path, bounded studies,
quotas, ownership of deletes, and one audit line per action."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import shared
from engine.__main__ import main
from engine.errors import UserError
from engine.inspection import inspect_model
from engine.measure.latency import MeasureSettings
from engine.optimizations import parse_chain
from engine.plan import StudySettings
from engine.study import delete_study, submit_study
from engine.report import source
from storage import catalogue
from storage import views
from storage.db import session

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--iterations", "3", "--min-seconds", "0.02", "--warmup", "1", "--threads", "1", "--timeout", "300",
        "--variants", "baseline", "--runtimes", "onnxruntime"]


@pytest.fixture
def shared_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARETOSCOPE_SHARED", "1")
    monkeypatch.setenv("PARETOSCOPE_ADMINS", "root@example.com")


def audit_lines(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "logs" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def quick(**overrides: Any) -> StudySettings:
    return StudySettings(measure=MeasureSettings(warmup=1, iterations=3, min_seconds=0.02, rounds=0), threads=1,
                         timeout_s=overrides.pop("timeout_s", 60), **overrides)


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(data_dir), "PARETOSCOPE_SHARED": "1"}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600, check=False)


@pytest.mark.parametrize("fixture", ["mlp_torchscript", "mlp_pt2"])
def test_bench_of_a_code_carrying_model_exits_2_in_shared_mode(fixture: str, data_dir: Path,
                                                              request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(fixture)
    proc = cli(data_dir, "bench", str(model), *FAST)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "shared mode refuses" in lines[0], proc.stderr
    assert "export it to ONNX" in lines[0]
    assert not list((data_dir / "models").glob("*/*")) if (data_dir / "models").exists() else True


def test_bench_of_an_onnx_model_still_measures_in_shared_mode(mlp_onnx: Path, data_dir: Path,
                                                             tmp_path: Path) -> None:
    out_json = tmp_path / "results.json"
    proc = cli(data_dir, "bench", str(mlp_onnx), *FAST, "--json", str(out_json))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(out_json.read_text())["results"]
    assert row["status"] == "ok" and row["latency_ms"]["p50"] > 0
    submits = [line for line in audit_lines(data_dir) if line["action"] == "submit-study"]
    assert len(submits) == 1 and submits[0]["user"].startswith("cli:")


def test_the_inspecting_child_refuses_code_in_shared_mode(mlp_torchscript: Path, shared_mode: None) -> None:
    """The dashboard's upload path: the child that inspects an upload refuses it before loading it."""
    with pytest.raises(UserError, match="shared mode refuses TorchScript"):
        inspect_model(mlp_torchscript)


def test_a_study_past_the_bounds_is_refused_naming_the_bound(mlp_onnx: Path, shared_mode: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model = inspect_model(mlp_onnx)
    chains = [parse_chain("baseline")]
    with pytest.raises(UserError, match=r"at most 900 s for the time limit.*PARETOSCOPE_SHARED_MAX_TIMEOUT_S"):
        submit_study(model, chains, ["onnxruntime"], [1], quick(timeout_s=3600), created_by="a@example.com")
    with pytest.raises(UserError, match="batch size"):
        submit_study(model, chains, ["onnxruntime"], [1024], quick(), created_by="a@example.com")
    monkeypatch.setenv("PARETOSCOPE_SHARED_MAX_ITERATIONS", "2")
    with pytest.raises(UserError, match="at most 2 for iterations"):
        submit_study(model, chains, ["onnxruntime"], [1], quick(), created_by="a@example.com")
    with session(write=False) as s:
        assert views.list_studies(s).empty  # nothing stored for a refused study


def test_unfinished_studies_per_person_are_capped(mlp_onnx: Path, shared_mode: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARETOSCOPE_SHARED_MAX_OPEN_STUDIES", "2")
    model = inspect_model(mlp_onnx)
    chains = [parse_chain("baseline")]
    for _ in range(2):
        submit_study(model, chains, ["onnxruntime"], [1], quick(), created_by="a@example.com")
    with pytest.raises(UserError, match="2 unfinished studies"):
        submit_study(model, chains, ["onnxruntime"], [1], quick(), created_by="a@example.com")
    submit_study(model, chains, ["onnxruntime"], [1], quick(), created_by="b@example.com")  # others still may


def test_only_the_creator_or_an_admin_deletes_a_study(mlp_onnx: Path, shared_mode: None, data_dir: Path) -> None:
    model = inspect_model(mlp_onnx)
    chains = [parse_chain("baseline")]
    first, _ = submit_study(model, chains, ["onnxruntime"], [1], quick(), created_by="alice@example.com")
    second, _ = submit_study(model, chains, ["onnxruntime"], [1], quick(), created_by="alice@example.com")
    with pytest.raises(UserError, match=r"only alice@example\.com or an admin may delete study"):
        delete_study(first, user="mallory@example.com")
    with pytest.raises(UserError, match=r"only alice@example\.com"):
        delete_study(first, user=None)  # nobody signed in is nobody's owner
    delete_study(first, user="Alice@Example.com")  # e-mail addresses compare without case
    delete_study(second, user="root@example.com")  # an admin
    with session(write=False) as s:
        assert views.list_studies(s).empty
    actions = [(line["action"], line["user"]) for line in audit_lines(data_dir)]
    assert actions.count(("submit-study", "alice@example.com")) == 2
    assert ("delete-study", "Alice@Example.com") in actions and ("delete-study", "root@example.com") in actions


def test_outside_shared_mode_anyone_deletes_and_nothing_is_bounded(mlp_onnx: Path) -> None:
    model = inspect_model(mlp_onnx)
    study_id, _ = submit_study(model, [parse_chain("baseline")], ["onnxruntime"], [1], quick(timeout_s=86_400),
                               created_by="alice@example.com")
    delete_study(study_id, user=None)


def test_the_upload_quota_counts_a_persons_models_and_data(mlp_onnx: Path, shared_mode: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARETOSCOPE_SHARED_QUOTA_MB", "1")
    model = inspect_model(mlp_onnx)
    with session() as s:
        catalogue.get_or_create_model(s, model.to_json(), "mlp", created_by="a@example.com")
        used = catalogue.upload_bytes(s, "a@example.com")
        assert used == model.size_bytes and catalogue.upload_bytes(s, "b@example.com") == 0
    shared.check_quota(used, 2**20 - used)  # exactly at the quota
    with pytest.raises(UserError, match="would pass your quota of 1 MB"):
        shared.check_quota(used, 2**20 - used + 1)


def test_a_bad_bound_in_the_environment_is_one_line(shared_mode: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARETOSCOPE_SHARED_MAX_TIMEOUT_S", "lots")
    with pytest.raises(UserError, match="PARETOSCOPE_SHARED_MAX_TIMEOUT_S='lots' is not a number"):
        shared.limits()


def test_server_paths_are_hidden_from_visitors(shared_mode: None, data_dir: Path) -> None:
    message = f"could not open {data_dir}/models/abc/model.onnx from {ROOT}/engine/job.py"
    visible = shared.visible_error(message)
    assert str(data_dir) not in visible and str(ROOT) not in visible
    assert "<data>/models/abc/model.onnx" in visible


def test_the_cli_records_who_submitted(mlp_onnx: Path, tmp_path: Path, data_dir: Path) -> None:
    """Outside shared mode the CLI's studies have no creator and the audit line says `local`."""
    out = io.StringIO()
    code = main(["bench", str(mlp_onnx), *FAST, "--submit"], out=out)
    assert code == 0, out.getvalue()
    (line,) = audit_lines(data_dir)
    assert (line["action"], line["user"]) == ("submit-study", "local")


def test_a_shared_worker_refuses_a_code_carrying_study_queued_before(mlp_torchscript: Path, data_dir: Path) -> None:
    """A study queued outside shared mode (or from an older version) still never loads on a shared worker."""
    model = inspect_model(mlp_torchscript)
    study_id, _ = submit_study(model, [parse_chain("baseline")], ["torchscript"], [1], quick())
    env = {**os.environ, "PARETOSCOPE_DATA_DIR": str(data_dir), "PARETOSCOPE_SHARED": "1"}
    proc = subprocess.run([sys.executable, "-m", "engine", "worker", "--until-idle"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    with session(write=False) as s:
        (row,) = source.study_results(s, study_id)
    assert row.status == "failed" and row.error and "shared mode refuses TorchScript" in row.error, row
    assert not (data_dir / "studies" / str(study_id) / "reference.npz").exists()  # nothing loaded it
