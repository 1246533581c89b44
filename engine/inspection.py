"""A user's model or data file is opened only in a child process with a time and a memory limit.

The CLI and the dashboard call these instead of reading the file themselves: a model whose inspection
hangs, allocates without bound or crashes ends the child, not the caller, and the caller gets one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.artifacts import Artifact
from engine.errors import UserError
from engine.executors.limits import inspect_memory_mb, inspect_timeout_s
from engine.executors.tasks import ProgressFn, Task, task
from engine.results import Status
from storage.paths import sub_dir
from engine.specs import InputSpec

# How an OSError of a full disk or quota reads once it crossed the pipe from the child.
_DISK_FULL = ("No space left on device", "Disk quota exceeded")


@task("intake")
def intake_task(payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    from engine.artifacts import intake

    return intake(payload["path"], input_spec=payload.get("input_spec"), seq_len=payload.get("seq_len")).to_json()


@task("check-data")
def check_data_task(payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    from engine.data import load_npz

    load_npz(payload["path"], InputSpec.from_json(payload["spec"]))
    return {}


@task("respec")
def respec_task(payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    from engine.artifacts import respec

    changed = respec(Artifact.from_json(payload["artifact"]), input_spec=payload.get("input_spec"),
                     seq_len=payload.get("seq_len"))
    return changed.to_json()


def _in_child(job: Task, payload: dict[str, Any], what: str) -> Any:
    from engine.executors.local import run_child

    limit, timeout_s = inspect_memory_mb(), inspect_timeout_s()
    outcome = run_child(job, {**payload, "memory_limit_mb": limit}, timeout_s, sub_dir("logs") / f"{job.name}.log")
    if outcome.status == Status.OK:
        return outcome.result
    if outcome.status == Status.FAILED and outcome.error_type == "UserError":
        raise UserError(str(outcome.error))
    if outcome.status == Status.FAILED and any(m in str(outcome.error) for m in _DISK_FULL):
        raise UserError(f"{what} stopped: the disk of the data folder is full; free space there (or ask the "
                        "server's admin), then try again")
    if outcome.status == Status.OOM:
        raise UserError(f"{what} passed the inspection's memory limit of {limit:.0f} MB "
                        "(PARETOSCOPE_INSPECT_MEMORY_MB): is the model or the file what you meant to upload?")
    if outcome.status == Status.TIMEOUT:
        raise UserError(f"{what} took longer than the inspection's limit of {timeout_s:g} s "
                        "(PARETOSCOPE_INSPECT_TIMEOUT_S); a model whose forward never returns cannot be measured")
    detail = f"{outcome.error_type}: {outcome.error}" if outcome.error_type else str(outcome.error)
    raise UserError(f"{what} could not be read ({outcome.status}: {detail.splitlines()[0][:300]})")


def inspect_model(path: str | Path, input_spec: str | None = None, seq_len: int | None = None) -> Artifact:
    """Intake (format, safe unpacking, storage, InputSpec) of an untrusted model file, in a limited child."""
    result = _in_child(intake_task, {"path": str(Path(path).resolve()), "input_spec": input_spec, "seq_len": seq_len},
                       f"inspecting {Path(path).name}")
    return Artifact.from_json(result)


def respec_model(artifact: Artifact, input_spec: str | None = None, seq_len: int | None = None) -> Artifact:
    """The stored model with another input spec or sequence length, checked against the model in a child."""
    result = _in_child(respec_task, {"artifact": artifact.to_json(), "input_spec": input_spec, "seq_len": seq_len},
                       f"checking the input spec of {artifact.path.name}")
    return Artifact.from_json(result)


def check_data(path: str | Path, spec: InputSpec) -> None:
    """Read an untrusted .npz against the model's inputs in a child (sizes are checked before allocating there)."""
    _in_child(check_data_task, {"path": str(Path(path).resolve()), "spec": spec.to_json()},
              f"reading {Path(path).name}")
