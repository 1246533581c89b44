"""The Ray dispatcher on a real Ray cluster of several nodes in this machine (ray.cluster_utils.Cluster): placement
by custom resources, artifacts through the object store into each node's own data folder, a node lost mid-cell,
a cell no node can take, a cancelled study. One cluster for the module: Ray's start is the slow part."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from engine.executors.ray_node import NODE_DIR_ENV, PREFIX, SLOT, cell_needs, gpu_model, machine_resource
from storage import db, queue
from storage.db import session
from tests.engine.test_worker import jobs, settings, wait_for
from tests.storage.helpers import make_study

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install -r requirements-ray.txt, or "
                                        "make install RAY=1); CI installs it")
ROOT = Path(__file__).resolve().parents[2]


def _node(name: str, *runtimes: str, **more: float) -> dict[str, Any]:
    resources = {SLOT: 1.0, f"{PREFIX}node.{name}": 1.0, **{f"{PREFIX}runtime.{r}": 1.0 for r in runtimes}}
    resources.update({f"{PREFIX}{k.replace('__', '.')}": v for k, v in more.items()})
    return {"num_cpus": 1, "resources": resources}


class RayCluster:
    """A head that runs nothing of ours and nodes added by name; each node's data folder under `nodes`."""

    def __init__(self, base: Path) -> None:
        from ray.cluster_utils import Cluster

        self.nodes_dir = base / "nodes"
        (base / "ray").mkdir()
        # what every node's processes inherit: their data folders' base and the runtime doubles (test-hang)
        self.env = {"RAY_TMPDIR": str(base), NODE_DIR_ENV: str(self.nodes_dir),
                    "PARETOSCOPE_PLUGINS": "tests.engine.runtime_doubles"}
        with self._node_env():
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "include_dashboard": False, "temp_dir": str(base / "ray")})
        self.handles: dict[str, Any] = {}

    @contextlib.contextmanager
    def _node_env(self) -> Iterator[None]:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def add(self, name: str, *runtimes: str, **more: float) -> None:
        with self._node_env():
            self.handles[name] = self.cluster.add_node(**_node(name, *runtimes, **more))
        self.cluster.wait_for_nodes()

    def remove(self, name: str) -> None:
        self.cluster.remove_node(self.handles.pop(name))

    def folder(self, name: str) -> Path:
        return self.nodes_dir / "ray-node" / name

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    # a short folder: Ray's unix sockets live under it (108 characters at most)
    base = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    made = None
    try:
        made = RayCluster(base)
        made.add("ort", "onnxruntime", cpu__avx2=1.0)
        made.add("ov", "openvino", "onnxruntime")
        with made._node_env():
            ray.init(address=made.cluster.address, logging_level="WARNING")
        yield made
    finally:
        ray.shutdown()
        if made is not None:
            made.shutdown()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def fresh_engines() -> Iterator[None]:
    db.reset()
    yield
    db.reset()


def _dispatch(study_id: int, **kwargs: Any) -> tuple[Any, threading.Thread]:
    from engine.ray_dispatch import RayDispatcher

    dispatcher = RayDispatcher("unused: connected already", study_id=study_id, **kwargs)
    thread = threading.Thread(target=dispatcher.run, kwargs={"until_idle": True}, daemon=True)
    thread.start()
    return dispatcher, thread


def _fresh_model(mlp_onnx: Path, folder: Path) -> Path:
    """The MLP with a doc string of its own: new bytes, so no node has it cached from an earlier test."""
    import onnx

    model = onnx.load(str(mlp_onnx))
    model.doc_string = uuid.uuid4().hex
    path = folder / "fresh.onnx"
    onnx.save(model, str(path))
    return path


def _rows(study_id: int) -> list[dict[str, Any]]:
    from engine.report import source

    with session(write=False) as s:
        return source.results_json(s, study_id)["results"]


def test_needs_and_machine_kinds_name_resources() -> None:
    assert cell_needs("openvino") == {SLOT: 1.0, "paretoscope.runtime.openvino": 0.01}
    assert machine_resource("cpu-avx512") == "paretoscope.cpu.avx512f"
    assert machine_resource("gpu-H100") == "paretoscope.gpu.h100"
    assert cell_needs("onnxruntime", "node-lab 3")["paretoscope.node.lab-3"] == 0.01
    assert gpu_model("NVIDIA H100 80GB HBM3") == "h100" and gpu_model("Tesla T4") == "t4"
    with pytest.raises(ValueError, match="machine kind"):
        machine_resource("avx512")


def test_worker_node_prints_its_ray_start_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "engine", "worker-node", "--address", "10.0.0.1:6379", "--name",
                           "lab1"], capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    line = proc.stdout.strip()
    assert line.startswith("ray start --address 10.0.0.1:6379 --resources ")
    assert '"paretoscope.node.lab1": 1.0' in line and '"paretoscope.slot": 1.0' in line
    assert '"paretoscope.runtime.onnxruntime": 1.0' in line


def test_engine_imports_no_ray() -> None:
    code = ("import sys, engine.__main__, engine.worker, engine.ray_dispatch, engine.executors.ray_node\n"
            "print('ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "False"


def _study_with_machines(cells: list[tuple[str, str | None]], artifact: dict[str, Any]) -> int:
    """A study of baseline cells, each (runtime, machine kind or None)."""
    from storage import catalogue

    rows = [{"index": i, "variant": "baseline", "chain": [], "runtime": runtime, "batch_size": 1,
             "status": "pending", "reason": None, "machine": machine} for i, (runtime, machine) in enumerate(cells)]
    with session() as s:
        model = catalogue.get_or_create_model(s, artifact, "model.onnx")
        return queue.create_study(s, name="machines", model=model, dataset=None, variants=["baseline"],
                                  runtimes=sorted({r for r, _ in cells}), batch_sizes=[1], settings=settings(),
                                  cells=rows).id


def test_per_machine_queues_each_cell_once_per_kind() -> None:
    from engine.plan import Cell
    from engine.study import per_machine

    planned = [Cell(0, "baseline", (), "onnxruntime", 1),
               Cell(1, "baseline", (), "tensorrt", 1, "unavailable", "no CUDA device")]
    cells = per_machine(planned, ["cpu-avx512", "gpu-h100"])
    assert [(c.index, c.runtime, c.machine, c.status) for c in cells] == [
        (0, "onnxruntime", "cpu-avx512", "pending"), (1, "onnxruntime", "gpu-h100", "pending"),
        (2, "tensorrt", "cpu-avx512", "pending"), (3, "tensorrt", "gpu-h100", "pending")]


def test_cells_run_on_the_node_that_has_their_needs_with_artifacts_shipped(cluster: RayCluster, data_dir: Path,
                                                                          mlp_onnx: Path, mlp_npz: Path) -> None:
    from engine.artifacts import intake
    from engine.report.machines import per_machine
    from engine.report.source import load_report
    from engine.worker import Worker
    from storage import blobs, catalogue

    artifact = intake(_fresh_model(mlp_onnx, data_dir.parent)).to_json()
    # by runtime (only ov has openvino), by CPU flag (only ort advertises avx2), by node name
    study_id = _study_with_machines([("onnxruntime", "node-ort"), ("openvino", None), ("onnxruntime", "cpu-avx2"),
                                     ("onnxruntime", "node-ov")], artifact)
    local_id = make_study(1, ["openvino"], settings=settings(), artifact=artifact)
    sha = blobs.put_file(mlp_npz)
    with session() as s:  # a data file, shipped as a blob
        dataset = catalogue.get_or_create_dataset(s, sha, "mlp.npz", mlp_npz.stat().st_size)
        for sid in (study_id, local_id):
            queue.get_study(s, sid).dataset_id = dataset.id  # type: ignore[union-attr]
    dispatcher, thread = _dispatch(study_id)
    thread.join(timeout=400)
    assert not thread.is_alive()
    rows = _rows(study_id)
    assert [r["status"] for r in rows] == ["ok"] * 4, [r["error"] for r in rows]
    assert [r["node"]["name"] for r in rows] == ["ort", "ov", "ort", "ov"]
    assert all(r["node"]["host"] and r["node"]["fingerprint"] for r in rows)
    # each node fetched the model and the data once, whatever number of its cells used them
    model_key, counts = artifact["sha256"], {}
    for node, key in dispatcher.fetches:
        counts[node, key] = counts.get((node, key), 0) + 1
    assert counts[("ort", model_key)] == 1 and counts[("ov", model_key)] == 1
    assert counts[("ort", sha)] == 1 and counts[("ov", sha)] == 1
    for node in ("ort", "ov"):  # a data folder of the node's own, not the dispatcher's
        folder = cluster.folder(node)
        assert (folder / "models" / model_key).is_dir() and (folder / "blobs" / sha[:2] / sha).is_file()
        assert not folder.is_relative_to(data_dir)
    log = (data_dir / "studies" / str(study_id) / "logs" / "cell-0001.log").read_text()
    assert "on Ray node ov" in log
    # this variant on each machine
    table = per_machine(load_report(study_id))
    assert table is not None and len(table) == 2
    assert {"p50 ms · node-ort", "p50 ms · cpu-avx2", "p50 ms · node-ov", "p50 ms · ov"} <= set(table.columns)
    # the same result's shape as the local queue's
    Worker(study_id=local_id).run(until_idle=True)
    local = _rows(local_id)[0]
    assert local["status"] == "ok" and set(local) == set(rows[1])
    assert set(local["node"]) <= set(rows[1]["node"])


def test_a_cell_no_node_can_take_is_unavailable_after_the_wait(cluster: RayCluster, mlp_onnx: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.artifacts import intake

    monkeypatch.setenv("PARETOSCOPE_RAY_PLACEMENT_WAIT_S", "0.5")
    study_id = make_study(1, ["tensorrt"], settings=settings(), artifact=intake(mlp_onnx).to_json())
    _, thread = _dispatch(study_id)
    thread.join(timeout=120)
    [job] = jobs(study_id)
    assert job.status == "unavailable"
    assert job.error_message.startswith("no node with paretoscope.runtime.tensorrt (waited 0.5 s")


def _signal(cluster: RayCluster, *names: str) -> str:
    """The node whose test-hang cell has started (its load left its pid in the node's data folder)."""
    found: list[str] = []

    def started() -> bool:
        found[:] = [n for n in names if any((cluster.folder(n) / "test-pids").glob("*"))]
        return bool(found)

    wait_for(started, timeout=180, what=f"a test-hang cell to start on {names}")
    return found[0]


def _pids_dead(folder: Path) -> bool:
    pids = [int(p.name) for p in (folder / "test-pids").iterdir()]
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_a_node_lost_mid_cell_is_retried_once_then_recorded(cluster: RayCluster, data_dir: Path,
                                                             mlp_onnx: Path) -> None:
    from engine.artifacts import intake

    cluster.add("hang-a", "test-hang")
    cluster.add("hang-b", "test-hang")
    study_id = make_study(1, ["test-hang"], settings=settings(timeout_s=600), artifact=intake(mlp_onnx).to_json())
    _, thread = _dispatch(study_id, placement_wait=300)
    first = _signal(cluster, "hang-a", "hang-b")
    cluster.remove(first)
    wait_for(lambda: _pids_dead(cluster.folder(first)), timeout=60, what="the lost node's cell to die")
    second = _signal(cluster, *({"hang-a", "hang-b"} - {first}))
    [job] = jobs(study_id)
    assert job.status == "running" and job.attempts == 2  # requeued once after the node was lost
    cluster.remove(second)
    thread.join(timeout=120)
    [job] = jobs(study_id)
    assert job.status == "crashed" and job.error_type == "NodeLost" and job.attempts == 2
    assert job.error_message.startswith("node lost:")
    wait_for(lambda: _pids_dead(cluster.folder(second)), timeout=60, what="the lost node's cell to die")


def test_cancelling_a_study_cancels_its_ray_task(cluster: RayCluster, data_dir: Path, mlp_onnx: Path) -> None:
    from engine.artifacts import intake

    cluster.add("hang-c", "test-hang")
    study_id = make_study(1, ["test-hang"], settings=settings(timeout_s=600), artifact=intake(mlp_onnx).to_json())
    _, thread = _dispatch(study_id, lease_s=3, heartbeat_s=0.5)
    _signal(cluster, "hang-c")
    with session() as s:
        queue.cancel_study(s, study_id)
    thread.join(timeout=120)
    [job] = jobs(study_id)
    assert job.status == "cancelled"
    wait_for(lambda: _pids_dead(cluster.folder("hang-c")), timeout=60, what="the cancelled cell to die")
    cluster.remove("hang-c")
