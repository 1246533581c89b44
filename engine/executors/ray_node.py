"""Run an executor task on a Ray node: the node's resources, its own data folder, the files shipped to it.

The executor's Ray side knows no task, as local.py does not: a dispatcher sends the task's name and module, a
payload whose paths under its data folder start with DATA_MARK, and the files they name as Shipments (bytes in
Ray's object store, keyed by content). The node unpacks each into its own data folder once (a later task finds it
there and fetches nothing), points the payload there, and runs the task in a fresh child with run_child, so the
time and memory limits, the crash boundary and the parent-death signal are the local executor's. No database: the
outcome, the log's tail and what the node is come back as the Ray task's return value.

Ray is imported inside functions only: `import engine` stays light (tests/test_lean_imports.py).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Payload paths under the dispatcher's data folder begin with this; the node puts its own data folder in its place.
DATA_MARK = "@paretoscope-data@"
PREFIX = "paretoscope."
# The measurement slot: every node advertises one and every cell takes it, so two cells never time on one node.
SLOT = PREFIX + "slot"
# Capabilities (a runtime, a CPU flag, a GPU model) are asked for in this small amount: a node holds each as 1, and
# the slot, not the capability, decides how many cells run there at once.
NEED = 0.01
# Where a node keeps its data folder (`<base>/ray-node/<node name>`): PARETOSCOPE_RAY_NODE_DIR, else the data folder's
# base (PARETOSCOPE_DATA_DIR), else ~/.cache/paretoscope.
NODE_DIR_ENV = "PARETOSCOPE_RAY_NODE_DIR"
# The part of a task's log that comes back with its result.
LOG_TAIL_BYTES = 16_384
# Machine kinds a study can target (`--machines`): a prefix and the resource family it names.
_KINDS = {"cpu": "cpu", "gpu": "gpu", "node": "node", "runtime": "runtime"}
# Short names for CPU flags in machine kinds: cpu-avx512 is AVX-512 Foundation.
_FLAG_ALIASES = {"avx512": "avx512f", "vnni": "avx512_vnni", "amx": "amx_tile"}


@dataclass(frozen=True)
class Shipment:
    """A file or folder of the dispatcher's data folder, at `rel` (e.g. models/<sha>), sent through Ray's object
    store as `ref` (a folder as a tar, a file as its bytes); `key` is its content's hash."""

    rel: str
    key: str
    ref: Any
    folder: bool


# --- resources -----------------------------------------------------------------------------------


def _name(text: str) -> str:
    """A resource-name part: lower case, letters, digits, '_' and '-' only."""
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "unknown"


def gpu_model(name: str) -> str:
    """The short model of an NVIDIA GPU's name: "NVIDIA H100 80GB HBM3" -> "h100", "Tesla T4" -> "t4"."""
    words = [w for w in _name(name).split("-") if w not in ("nvidia", "tesla", "geforce", "rtx", "quadro")]
    model = next((w for w in words if re.fullmatch(r"[a-z]+\d+[a-z]*", w)), None)
    return model or "-".join(words) or "unknown"


def default_node_name() -> str:
    return _name(platform.node())


def node_resources(node_name: str | None = None) -> dict[str, float]:
    """The custom resources this machine advertises to Ray: its measurement slot and name, each available runtime,
    each CPU flag that decides a number format's speed, and each GPU model (as many as it has)."""
    from engine.measure.devices import cuda_devices
    from engine.measure.hardware import CPU_FLAGS, cpu_flags
    from engine.plugins import load_plugins
    from engine.runtimes import availability

    load_plugins()
    resources: dict[str, float] = {SLOT: 1.0, f"{PREFIX}node.{_name(node_name or default_node_name())}": 1.0}
    for row in availability():
        if row["available"]:
            resources[f"{PREFIX}runtime.{row['id']}"] = 1.0
    for flag in sorted(set(CPU_FLAGS) & (cpu_flags() or frozenset())):
        resources[f"{PREFIX}cpu.{flag}"] = 1.0
    gpus, _ = cuda_devices()
    for gpu in gpus:
        key = f"{PREFIX}gpu.{gpu_model(gpu['name'])}"
        resources[key] = resources.get(key, 0.0) + 1.0
    return resources


def machine_resource(kind: str) -> str:
    """The resource a machine kind asks for: cpu-avx512_vnni -> paretoscope.cpu.avx512_vnni, gpu-h100 ->
    paretoscope.gpu.h100, node-lab3 -> paretoscope.node.lab3 (cpu-avx512 is avx512f)."""
    family, _, value = kind.strip().lower().partition("-")
    if family not in _KINDS or not value:
        raise ValueError(f"machine kind '{kind}': write cpu-FLAG (cpu-avx512, cpu-avx512_vnni), gpu-MODEL (gpu-h100), "
                         "node-NAME or runtime-ID")
    if family == "cpu":
        value = _FLAG_ALIASES.get(value, value)
    return f"{PREFIX}{_KINDS[family]}.{_name(value)}"


def cell_needs(runtime: str, machine: str | None = None) -> dict[str, float]:
    """What a cell asks of its node: the slot, its runtime installed and working, and its machine kind if any."""
    needs = {SLOT: 1.0, f"{PREFIX}runtime.{runtime}": NEED}
    if machine:
        needs[machine_resource(machine)] = NEED
    return needs


def start_command(address: str | None, resources: dict[str, float], head: bool = False) -> list[str]:
    """The `ray start` that joins this machine to a cluster (or starts its head) with its resources."""
    command = ["ray", "start"]
    command += ["--head"] if head else ["--address", address or "HEAD:6379"]
    return [*command, "--resources", json.dumps(resources, sort_keys=True)]


def shell_line(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


# --- shipping ------------------------------------------------------------------------------------


def pack(path: Path) -> bytes:
    """A folder as an uncompressed tar (models are mostly incompressible weights), a file as its bytes."""
    if not path.is_dir():
        return path.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(path, arcname=".")
    return buffer.getvalue()


def content_key(path: Path) -> str:
    """A file's sha256, or a folder's over its files' relative names and contents."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _unpack(data: bytes, dest: Path, folder: bool) -> None:
    """Write the shipped bytes at `dest` through a staging name and one rename: a node never sees half a model."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".incoming-{os.getpid()}-", dir=dest.parent))
    try:
        if folder:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
                archive.extractall(staging / "x", filter="data")  # refuses absolute paths and links out
            target = staging / "x"
        else:
            target = staging / "x"
            target.write_bytes(data)
        try:
            os.replace(target, dest)
        except OSError:
            if not dest.exists():
                raise  # another task of this node placed the same content first otherwise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def relocate(value: Any, old: str, new: str) -> Any:
    """`value` with every string path under `old` moved under `new` (dicts and lists walked)."""
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + "/") else value
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [relocate(v, old, new) for v in value]
    return value


# --- on the node ---------------------------------------------------------------------------------


@functools.cache
def _this_node() -> tuple[str, str | None]:
    """(Ray's id of the node this process runs on, its paretoscope node name if it advertises one)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            names = [k[len(PREFIX + "node."):] for k in node.get("Resources", {}) if k.startswith(PREFIX + "node.")]
            return node_id, names[0] if names else None
    return node_id, None


def node_data_dir() -> Path:
    node_id, name = _this_node()
    base = os.environ.get(NODE_DIR_ENV) or os.environ.get("PARETOSCOPE_DATA_DIR") or "~/.cache/paretoscope"
    return Path(base).expanduser().resolve() / "ray-node" / (name or node_id[:16])


@functools.cache
def _environment() -> dict[str, Any]:
    from engine.measure.environment import collect

    return collect()


def run_on_node(module: str, name: str, payload: dict[str, Any], shipments: list[Shipment], timeout_s: float,
                log_rel: str, returns: list[str]) -> dict[str, Any]:
    """The Ray task: place the shipped files in this node's data folder, run the task in a child, return its end.

    Returns {"outcome": the Outcome's fields, "log_tail", "node": {name, host, ray_node_id}, "environment": the
    node's (engine.measure.environment.collect), "fetched": the keys this call fetched, "returned": {rel: bytes}}."""
    import ray

    from engine.executors.local import run_child
    from engine.executors.tasks import Task
    from storage.paths import ENV

    root = node_data_dir()
    root.mkdir(parents=True, exist_ok=True)
    # this process's children (and this process's own data-folder lookups) use the node's folder: Ray's workers of
    # a node run tasks only for this executor
    os.environ[ENV] = str(root)
    fetched = []
    for item in shipments:
        dest = root / item.rel
        if not dest.exists():
            _unpack(ray.get(item.ref), dest, item.folder)
            fetched.append(item.key)
    log = root / log_rel
    log.parent.mkdir(parents=True, exist_ok=True)
    start = log.stat().st_size if log.exists() else 0
    local = relocate(payload, DATA_MARK, str(root))
    task = Task(name, module, lambda p, progress: {})  # the child imports the module that registers the task
    outcome = run_child(task, local, timeout_s, log)
    with open(log, "rb") as fh:
        fh.seek(max(start, log.stat().st_size - LOG_TAIL_BYTES))
        tail = fh.read().decode(errors="replace")
    node_id, node_name = _this_node()
    returned = {rel: (root / rel).read_bytes() for rel in returns
                if outcome.status == "ok" and (root / rel).is_file()}
    return {"outcome": {"status": str(outcome.status), "result": outcome.result, "error": outcome.error,
                        "error_type": outcome.error_type, "traceback": outcome.traceback,
                        "elapsed_s": outcome.elapsed_s},
            "log_tail": tail, "fetched": fetched, "returned": returned, "environment": _environment(),
            "node": {"name": node_name, "host": platform.node(), "ray_node_id": node_id}}


@functools.cache
def remote_runner() -> Any:
    """run_on_node as a Ray remote function: never retried by Ray (the queue's own rule retries a crash once), and
    holding no CPU (the slot in its options says where and how many)."""
    import ray

    return ray.remote(max_retries=0, num_cpus=0)(run_on_node)
