"""The Ray dispatcher: claim jobs from the database and run each cell as a Ray task on a node that has what it needs.

One study, many machines. The dispatcher is the queue's one writer, as a worker is: it claims a job (lease,
heartbeat, retries and cancels as storage/queue.py rules), computes the study's reference outputs here once, puts
the model, data and reference bytes in Ray's object store once each, and sends the cell to a node whose custom
resources (engine/executors/ray_node.py) cover its runtime and machine kind. The node runs it in its own child
process and returns the CellResult; the dispatcher records it with the node's host and hardware. A node lost
mid-cell is a crash (retried once, as a crashed cell is); a cell no node can take is `unavailable` after
PARETOSCOPE_RAY_PLACEMENT_WAIT_S seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.executors.local import Outcome
from engine.executors.ray_node import DATA_MARK, SLOT, Shipment, cell_needs, pack, relocate, remote_runner
from engine.job import cell_task
from engine.plan import Cell
from engine.prepare import REFERENCE_FILE
from engine.results import Status
from engine.worker import Worker, _first_line, _missing_model, _refused_here
from storage import queue
from storage.db import session
from storage.paths import data_dir

ADDRESS_ENV = "PARETOSCOPE_RAY_ADDRESS"
PLACEMENT_WAIT_ENV = "PARETOSCOPE_RAY_PLACEMENT_WAIT_S"
PLACEMENT_WAIT_S = 30.0
# The longest the dispatcher blocks on Ray for a finished cell before it claims, places and heartbeats again.
WAIT_S = 1.0
# Cells claimed ahead of the free slots: a cell that waits for its node does not keep another node idle.
AHEAD = 2


def placement_wait_s() -> float:
    return float(os.environ.get(PLACEMENT_WAIT_ENV, PLACEMENT_WAIT_S))


@dataclass
class _Flight:
    """A claimed job on its way through Ray: not yet sent (`ref` None) while no node can take it."""

    job_id: int
    cell: Cell
    meta: dict[str, Any]
    needs: dict[str, float]
    payload: dict[str, Any]
    call: tuple[Any, ...] = ()  # set once a node can take it: the reference is computed for a cell that can run
    ref: Any = None
    unplaceable_since: float | None = None
    unavailable: str | None = None  # why it was cancelled for want of a node
    cancel: bool = False  # its study was cancelled (or its lease lost): stop it
    cancel_sent: bool = False
    fetched: list[str] = field(default_factory=list)


class RayDispatcher(Worker):
    """A worker whose cells run on Ray nodes, several at once (one per node), instead of in its own children."""

    def __init__(self, address: str = "local", *, placement_wait: float | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("idle_s", 0.2)
        super().__init__(**kwargs)
        self.address = address
        self.placement_wait_s = placement_wait_s() if placement_wait is None else placement_wait
        self._flights: dict[int, _Flight] = {}
        self._objects: dict[str, Any] = {}  # content key -> ObjectRef: each file enters the object store once
        self._connected_here = False
        # (node name, content key) each time a node fetched a shipped file: once per node and file
        self.fetches: list[tuple[str, str]] = []

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self, until_idle: bool = False, max_jobs: int | None = None) -> int:
        self._connect()
        try:
            return super().run(until_idle, max_jobs)
        finally:
            self._abandon()
            if self._connected_here:
                import ray

                ray.shutdown()

    def _connect(self) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("Ray is not installed: pip install -r requirements-ray.txt (or make install RAY=1)"
                            ) from None
        if ray.is_initialized():
            return
        if self.address == "local":
            from engine.executors.ray_node import node_resources

            # this machine as the one node: its resources derived as `python -m engine worker-node` would
            ray.init(resources=node_resources(), include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=self.address, logging_level=logging.WARNING)
        self._connected_here = True

    def _abandon(self) -> None:
        """A stopping dispatcher cancels its cells' Ray tasks and gives their jobs back to the queue."""
        import ray

        with self._lock:
            flights = list(self._flights.values())
            self._flights.clear()
        for flight in flights:
            if flight.ref is not None:
                ray.cancel(flight.ref, force=True)
            self._give_back(flight.job_id)

    # --- heartbeat ---------------------------------------------------------------------------

    def _beat(self) -> None:
        with self._lock:
            flights = list(self._flights.values())
        with session() as s:
            queue.worker_heartbeat(s, self.id, "busy" if flights else "idle", flights[0].job_id if flights else None)
            lost = [f for f in flights if not queue.extend_lease(s, f.job_id, self.id, self.lease_s)]
        for flight in lost:
            flight.cancel = True  # the main loop cancels its Ray task: the Ray API stays on one thread

    # --- the loop ----------------------------------------------------------------------------

    def _next_job(self) -> int:
        with session() as s:
            queue.requeue_expired(s, self.lease_s)
        self._claim()
        self._place()
        return self._collect()

    def _claim(self) -> None:
        capacity = AHEAD * max(1, int(_cluster().get(SLOT, 0)))
        while len(self._flights) < capacity and not self._stop.is_set():
            with session() as s:
                job = queue.claim_job(s, self.id, self.lease_s, self.study_id)
                if job is None:
                    return
                payload, cell, meta = self._payload(s, job)
                machine = job.machine
            flight = _Flight(job.id, cell, meta, cell_needs(cell.runtime, machine), payload)
            with self._lock:
                self._flights[job.id] = flight  # heartbeated from now on
            self.events.started(cell, meta["position"], meta["total"])

    def _prepare(self, flight: _Flight, payload: dict[str, Any]) -> Outcome | None:
        """The checks a worker makes, the study's reference, and the call with its shipped files; an Outcome when
        the cell ends here."""
        missing = _missing_model(payload["model"])
        if missing:
            return Outcome(Status.FAILED, error=missing, error_type="ModelFileMissing")
        refused = _refused_here(payload["model"])
        if refused:
            return Outcome(Status.FAILED, error=refused, error_type="SharedModeRefused")
        folder = Path(payload["study_dir"])
        meta = flight.meta
        reference = meta["reference"] or self._ensure_reference(flight.job_id, meta["study_id"], payload, flight.cell,
                                                                folder, meta["timeout_s"])
        if reference.get("error"):
            return Outcome(Status.FAILED, error=reference["error"], error_type="ReferenceFailed")
        if not (folder / REFERENCE_FILE).is_file():
            return Outcome(Status.FAILED, error_type="ReferenceMissing",
                           error=f"the study's reference outputs are not in this dispatcher's data folder ({folder}): "
                                 "run the dispatcher with the data folder of the worker that computed them")
        try:
            shipments = [self._ship(Path(payload["model"]["path"]))]
            if payload.get("data"):
                shipments.append(self._ship(Path(payload["data"])))
        except ValueError as exc:
            return Outcome(Status.FAILED, error=str(exc), error_type="NotShippable")
        digest = hashlib.sha256((folder / REFERENCE_FILE).read_bytes()).hexdigest()
        # the node's study folder is named by its reference's content: two databases' study 1 never share one
        node_study = f"studies/ref-{digest[:24]}"
        shipments.append(self._put(f"{node_study}/{REFERENCE_FILE}", digest, folder / REFERENCE_FILE, folder=False))
        sent = {**relocate(payload, str(data_dir()), DATA_MARK), "study_dir": f"{DATA_MARK}/{node_study}"}
        log_rel = f"{node_study}/logs/cell-{flight.cell.index:04d}.log"
        flight.call = (cell_task.module, cell_task.name, sent, shipments, meta["timeout_s"], log_rel, [])
        return None

    def _ship(self, path: Path) -> Shipment:
        """A payload's file as a shipment: a model's whole folder (its external data files with it), a blob."""
        root = data_dir()
        try:
            rel = path.resolve().relative_to(root)
        except ValueError:
            raise ValueError(f"{path} is outside the data folder ({root}), so it cannot be shipped to a node") from None
        if rel.parts[0] == "models" and len(rel.parts) > 2:  # models/<sha256 of the upload>/...: content-addressed
            return self._put("/".join(rel.parts[:2]), rel.parts[1], root.joinpath(*rel.parts[:2]), folder=True)
        if rel.parts[0] == "blobs":  # blobs/xx/<sha256>
            return self._put(str(rel), rel.parts[-1], path, folder=False)
        raise ValueError(f"{path} is not a stored model or data file, so it cannot be shipped to a node")

    def _put(self, rel: str, key: str, path: Path, folder: bool) -> Shipment:
        import ray

        ref = self._objects.get(key)
        if ref is None:
            ref = self._objects[key] = ray.put(pack(path))
        return Shipment(rel, key, ref, folder)

    def _place(self) -> None:
        """Send each waiting cell to Ray once a live node has what it needs; end it `unavailable` when none has had
        it for the placement wait. Cancel what must stop."""
        import ray

        nodes = None
        now = time.monotonic()
        for flight in list(self._flights.values()):
            if flight.cancel:
                if flight.ref is None:
                    self._finish(flight, Outcome(Status.CANCELLED,
                                                 error="the study was cancelled before this cell ran"))
                elif not flight.cancel_sent:
                    ray.cancel(flight.ref, force=True)
                    flight.cancel_sent = True
                continue
            if flight.cancel_sent:
                continue
            nodes = nodes if nodes is not None else _live_nodes()
            if any(_covers(node, flight.needs) for node in nodes):
                flight.unplaceable_since = None
                if not flight.call:
                    ended = self._prepare(flight, flight.payload)
                    if ended is not None:
                        self._finish(flight, ended)
                        continue
                if flight.ref is None:
                    flight.ref = remote_runner().options(resources=flight.needs).remote(*flight.call)
                    self._save_progress(flight.job_id, "waiting for a Ray node", 0.0)
                continue
            flight.unplaceable_since = flight.unplaceable_since or now
            if now - flight.unplaceable_since < self.placement_wait_s:
                continue
            reason = (f"no node with {', '.join(k for k in sorted(flight.needs) if k != SLOT)} "
                      f"(waited {self.placement_wait_s:g} s; see `python -m engine worker-node`)")
            if flight.ref is None:
                self._finish(flight, Outcome(Status.UNAVAILABLE, error=reason))
            else:  # sent, then its node left: stop it pending forever
                flight.unavailable = reason
                ray.cancel(flight.ref, force=True)
                flight.cancel_sent = True

    def _collect(self) -> int:
        """Record the cells whose Ray task ended (waiting up to WAIT_S for the first); how many ended."""
        import ray

        refs = {flight.ref: flight for flight in self._flights.values() if flight.ref is not None}
        if not refs:
            return 0
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=WAIT_S)
        for ref in ready:
            flight = refs[ref]
            outcome, environment = self._ended(flight, ref)
            self._finish(flight, outcome, environment)
        return len(ready)

    def _ended(self, flight: _Flight, ref: Any) -> tuple[Outcome, dict[str, Any] | None]:
        """The cell's Outcome from its Ray task's reply, or from how Ray says the task ended."""
        import ray
        from ray import exceptions as rex

        from engine.measure.environment import node_record

        try:
            reply = ray.get(ref)
        except rex.TaskCancelledError:
            if flight.unavailable:
                return Outcome(Status.UNAVAILABLE, error=flight.unavailable), None
            return Outcome(Status.CANCELLED, error="the study was cancelled while this cell ran"), None
        except rex.OutOfMemoryError as exc:
            return Outcome(Status.OOM, error=f"Ray's memory monitor killed the cell: {_first_line(exc)}",
                           error_type="RayOutOfMemory"), None
        except rex.RayTaskError as exc:  # the node's own part failed (placing files, starting the child)
            return Outcome(Status.FAILED, error=_first_line(exc), error_type="RayTaskError", traceback=str(exc)), None
        except rex.RayError as exc:  # the node, its raylet or its worker died: the machine's fault, retried once
            return Outcome(Status.CRASHED, error=f"node lost: {type(exc).__name__}: {_first_line(exc)}"[:500],
                           error_type="NodeLost"), None
        node = reply["node"]
        for key in reply["fetched"]:
            self.fetches.append((node["name"] or node["ray_node_id"], key))
        self._append_log(flight, node, reply["log_tail"])
        ended = reply["outcome"]
        outcome = Outcome(Status(ended["status"]), result=ended["result"], error=ended["error"],
                          error_type=ended["error_type"], traceback=ended["traceback"], elapsed_s=ended["elapsed_s"])
        if flight.cancel and outcome.status != Status.OK:
            outcome = Outcome(Status.CANCELLED, error="the study was cancelled while this cell ran")
        environment = reply["environment"]
        if outcome.result is not None:
            outcome.result["node"] = node_record(environment, name=node["name"], ray_node_id=node["ray_node_id"])
        return outcome, environment

    def _append_log(self, flight: _Flight, node: dict[str, Any], tail: str) -> None:
        """The node's log of the cell, in the dispatcher's study folder where a worker's log would be."""
        log = data_dir() / "studies" / str(flight.meta["study_id"]) / "logs" / f"cell-{flight.cell.index:04d}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"--- on Ray node {node['name'] or node['ray_node_id']} ({node['host']}) ---\n{tail}")

    def _finish(self, flight: _Flight, outcome: Outcome, environment: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._flights.pop(flight.job_id, None)
        self._record(flight.job_id, flight.cell, outcome, flight.meta, environment)


def _cluster() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def _live_nodes() -> list[dict[str, Any]]:
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def _covers(node: dict[str, Any], needs: dict[str, float]) -> bool:
    have = node.get("Resources") or {}
    return all(have.get(key, 0.0) >= amount for key, amount in needs.items())
