"""Shared-server mode (`PARETOSCOPE_SHARED=1`): one dashboard and worker that many signed-in people reach.

What changes in that mode, on every path (dashboard, CLI, worker, the inspecting child):
- models that carry code (TorchScript, torch.export .pt2) are refused: loading them runs the uploader's code;
- study settings are bounded, so one visitor cannot hold the worker for hours;
- each user has an upload quota and a cap on unfinished studies;
- only a study's or model's owner, or an admin (`PARETOSCOPE_ADMINS`), deletes or cancels it;
- every upload, submit, cancel and delete leaves one JSON line in `logs/audit.log` of the data folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.errors import UserError
from storage.paths import sub_dir

ENV = "PARETOSCOPE_SHARED"
# Formats whose loading runs code the uploader wrote (TorchScript methods, `.pt2` graph modules and pickles, a
# SavedModel's graph, whose TensorFlow ops include reading and writing files).
CODE_FORMATS = {"torchscript": "TorchScript", "pt2": "torch.export (.pt2)", "savedmodel": "TensorFlow SavedModel"}
# How to turn each into a format a shared server takes
_INSTEAD = {"savedmodel": "convert it to ONNX (tf2onnx) and upload the .onnx, or upload the Keras .keras file"}


def enabled() -> bool:
    """Shared mode is on for this process (and, through the environment, its children)."""
    return os.environ.get(ENV, "") == "1"


def refuse_code_format(fmt: str, label: str) -> None:
    """In shared mode, a format that carries code is refused before anything loads it."""
    if enabled() and fmt in CODE_FORMATS:
        instead = _INSTEAD.get(fmt, "export it to ONNX (torch.onnx.export) and upload the .onnx")
        raise UserError(f"{label}: shared mode refuses {CODE_FORMATS[fmt]} models, whose loading runs code written "
                        f"by the uploader; {instead}")


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise UserError(f"{name}={raw!r} is not a number; set it to a positive number or unset it") from exc
    if value <= 0:
        raise UserError(f"{name}={raw!r} must be positive; set it to a positive number or unset it")
    return value


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one person may ask of a shared server; each one is an environment variable."""

    timeout_s: float = 900.0
    iterations: int = 2_000
    warmup: int = 200
    min_seconds: float = 30.0
    eval_samples: int = 2_048
    batch_size: int = 256
    cells: int = 64
    threads: int = 256
    upload_quota_mb: float = 4_096.0
    open_studies: int = 3

    @classmethod
    def from_env(cls) -> Limits:
        base = cls()
        return cls(
            timeout_s=_env_number("PARETOSCOPE_SHARED_MAX_TIMEOUT_S", base.timeout_s),
            iterations=int(_env_number("PARETOSCOPE_SHARED_MAX_ITERATIONS", base.iterations)),
            warmup=int(_env_number("PARETOSCOPE_SHARED_MAX_WARMUP", base.warmup)),
            min_seconds=_env_number("PARETOSCOPE_SHARED_MAX_MIN_SECONDS", base.min_seconds),
            eval_samples=int(_env_number("PARETOSCOPE_SHARED_MAX_EVAL_SAMPLES", base.eval_samples)),
            batch_size=int(_env_number("PARETOSCOPE_SHARED_MAX_BATCH", base.batch_size)),
            cells=int(_env_number("PARETOSCOPE_SHARED_MAX_CELLS", base.cells)),
            threads=int(_env_number("PARETOSCOPE_SHARED_MAX_THREADS", base.threads)),
            upload_quota_mb=_env_number("PARETOSCOPE_SHARED_QUOTA_MB", base.upload_quota_mb),
            open_studies=int(_env_number("PARETOSCOPE_SHARED_MAX_OPEN_STUDIES", base.open_studies)),
        )


def limits() -> Limits | None:
    """The bounds in force: None outside shared mode (a person on their own machine may ask for anything)."""
    return Limits.from_env() if enabled() else None


def check_study(settings: Any, batch_sizes: list[int], runnable_cells: int) -> None:
    """Refuse a study whose settings pass the shared server's bounds, naming the first bound it passes."""
    bounds = limits()
    if bounds is None:
        return
    measure = settings.measure
    asked = [("the time limit per cell", settings.timeout_s, bounds.timeout_s, "s", "PARETOSCOPE_SHARED_MAX_TIMEOUT_S"),
             ("iterations", measure.iterations, bounds.iterations, "", "PARETOSCOPE_SHARED_MAX_ITERATIONS"),
             ("warm-up iterations", measure.warmup, bounds.warmup, "", "PARETOSCOPE_SHARED_MAX_WARMUP"),
             ("minimum seconds", measure.min_seconds, bounds.min_seconds, "s", "PARETOSCOPE_SHARED_MAX_MIN_SECONDS"),
             ("evaluation samples", settings.eval_samples, bounds.eval_samples, "",
              "PARETOSCOPE_SHARED_MAX_EVAL_SAMPLES"),
             ("threads", settings.threads, bounds.threads, "", "PARETOSCOPE_SHARED_MAX_THREADS"),
             ("the batch size", max(batch_sizes, default=0), bounds.batch_size, "", "PARETOSCOPE_SHARED_MAX_BATCH"),
             ("cells that run", runnable_cells, bounds.cells, "", "PARETOSCOPE_SHARED_MAX_CELLS")]
    for what, value, bound, unit, env in asked:
        if value > bound:
            raise UserError(f"this shared server allows at most {bound:g}{unit and ' ' + unit} for {what} "
                            f"(asked {value:g}); lower it, or ask the server's admin to raise {env}")


def check_quota(used_bytes: int, new_bytes: int) -> None:
    """Refuse an upload that would take a user past their quota."""
    bounds = limits()
    if bounds is None:
        return
    quota = bounds.upload_quota_mb * 2**20
    if used_bytes + new_bytes > quota:
        raise UserError(f"this upload ({new_bytes / 2**20:.1f} MB) would pass your quota of "
                        f"{bounds.upload_quota_mb:g} MB ({used_bytes / 2**20:.1f} MB used); delete models or data "
                        "you no longer need")


def check_open_studies(open_studies: int) -> None:
    """Refuse a study while the user already has the most unfinished ones allowed."""
    bounds = limits()
    if bounds is not None and open_studies >= bounds.open_studies:
        raise UserError(f"you have {open_studies} unfinished studies, the most this shared server runs per person; "
                        "wait for one to finish or cancel one")


def cli_user() -> str | None:
    """Who submits from the command line of a shared server: the operator's login, marked as such."""
    import getpass

    return f"cli:{getpass.getuser()}" if enabled() else None


def admins() -> set[str]:
    """Users who may delete and cancel anyone's studies and models: `PARETOSCOPE_ADMINS`, comma-separated."""
    return {a.strip().lower() for a in os.environ.get("PARETOSCOPE_ADMINS", "").split(",") if a.strip()}


def may_change(user: str | None, owner: str | None) -> bool:
    """Whether `user` may delete or cancel something `owner` created (everyone may, outside shared mode)."""
    if not enabled():
        return True
    if user is None:
        return False
    return user.lower() in admins() or (owner is not None and owner.lower() == user.lower())


def audit(action: str, user: str | None, **fields: Any) -> None:
    """One JSON line per action in the data folder's logs/audit.log (always, not only in shared mode)."""
    line = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "user": user or "local", "action": action, **fields}
    with open(sub_dir("logs") / "audit.log", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, default=str) + "\n")


def visible_error(message: str | None) -> str | None:
    """An error message fit for a visitor: in shared mode, server paths become `<data>` / `<server>`."""
    if message is None or not enabled():
        return message
    from storage.paths import data_dir

    text = message.replace(str(data_dir()), "<data>")
    return text.replace(str(_project_root()), "<server>")


def _project_root() -> Any:
    from pathlib import Path

    return Path(__file__).resolve().parents[1]
