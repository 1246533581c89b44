"""What machine and software produced a result: CPU, cores, threads, library versions, git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

from engine import __version__
from engine.measure.devices import cuda_devices
from engine.measure.hardware import cpu_capabilities, gpu_precisions

_LIBRARIES = ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "openvino", "nncf", "tensorrt", "transformers",
              "numpy")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect(threads: int | None = None) -> dict[str, Any]:
    gpus, gpu_reason = cuda_devices()
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "threads": threads,
        "cpu_capabilities": cpu_capabilities(),
        "gpus": [{**gpu, "precisions": gpu_precisions(gpu["compute_capability"])} for gpu in gpus],
        "gpu_reason": gpu_reason,
        "libraries": library_versions(),
        "paretoscope": __version__,
        "git_commit": git_commit(),
    }


# The fields of collect() that say what the machine is (not its name, its software or a run's threads).
HARDWARE_KEYS = ("cpu", "cores_logical", "cores_physical", "memory_gb", "cpu_capabilities", "gpus")


def node_record(environment: dict[str, Any], **more: Any) -> dict[str, Any]:
    """The results JSON's `node`: the host that ran a cell and its hardware fingerprint (the same on two machines
    of one kind), with anything the executor adds (its node's name)."""
    import hashlib
    import json

    hardware = {key: environment.get(key) for key in HARDWARE_KEYS}
    fingerprint = hashlib.sha256(json.dumps(hardware, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"host": environment.get("hostname"), "fingerprint": fingerprint, **more}
