"""`python -m engine deploy`: the cell it picks, the bundles it writes, and each bundle run as a user runs it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from google.protobuf import text_format

from engine.__main__ import main
from engine.deploy.bundle import DeployCell, deploy_cell, load_deploy_cell
from engine.deploy.write import bundle_zip, write_bundle
from engine.errors import UserError
from engine.results import CellResult
from engine.specs import InputSpec
from tests.deploy.conftest import Seeded, triton_model_config
from tests.report.studies import result

# Generous: CI runs on two busy cores, and a server's start imports FastAPI and ONNX Runtime.
DEADLINE_S = 120


def cell_of(study: int, runtime: str) -> int:
    from engine.report.source import load_report

    return next(r["cell"] for r in load_report(study)["results"] if r["runtime"] == runtime)


def in_process(deployed: DeployCell, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The cell's outputs from the engine's own runtime, as the benchmark ran it."""
    from engine.runtimes import get
    from engine.variants import Variant

    path = Path(deployed.cell.variant_path or "")
    variant = Variant(deployed.cell.variant, deployed.cell.target or "onnx", path, path.stat().st_size, [], 0.0, True,
                      input_names=deployed.spec.names)
    with get(deployed.cell.runtime).create(1).load(variant) as session:
        return session.fetch(session.run(session.prepare(feeds)))


def text_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8") for p in folder.rglob("*")
            if p.is_file() and p.suffix in (".py", ".json", ".txt", ".md", ".pbtxt", "")}


def test_bundles_hold_the_variant_and_text_only(seeded: Seeded, data_dir: Path, tmp_path: Path) -> None:
    cell = cell_of(seeded.study, "onnxruntime")
    for target, expected in (("fastapi", {"serve.py", "served_model.py", "requirements.txt", "Dockerfile", "README.md",
                                          "spec.json", "bundle.json", "example.json", "model/model.onnx"}),
                             ("hf-endpoint", {"handler.py", "served_model.py", "requirements.txt", "README.md",
                                              "spec.json", "bundle.json", "model/model.onnx"}),
                             ("triton", {"README.md", "bundle.json", "model_repository/mlp/config.pbtxt",
                                         "model_repository/mlp/1/model.onnx"})):
        out = tmp_path / target
        write_bundle(load_deploy_cell(seeded.study, cell), target, out)
        files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        assert files == expected, target
        for name, text in text_files(out).items():
            for local in (str(data_dir), str(tmp_path), str(Path.home()), str(Path(__file__).resolve().parents[2])):
                assert local not in text, (target, name)
            assert "import engine" not in text and "from engine" not in text, (target, name)
        assert not [f for f in files if f.endswith((".pkl", ".pickle"))]
        zipped = zipfile.ZipFile(io.BytesIO(bundle_zip(seeded.study, cell, target)))
        root = f"paretoscope-study-{seeded.study}-cell-{cell}-{target}"
        assert {n.removeprefix(root + "/") for n in zipped.namelist()} == expected
    requirements = (tmp_path / "fastapi" / "requirements.txt").read_text().split()
    assert requirements[0].startswith("onnxruntime==") and "torch" not in " ".join(requirements)
    assert {"fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.20"} <= set(requirements)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        got = predicate()
        if got is not None:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _health(url: str) -> int | None:
    try:
        return httpx.get(f"{url}/healthz", timeout=10).status_code
    except httpx.TransportError:
        return None


# standalone: with `engine` unimportable, as where the bundle is run
LAUNCHER = ("import runpy, sys; sys.modules['engine'] = None; sys.path.insert(0, '.'); "
            "sys.argv = ['serve.py', *sys.argv[1:]]; runpy.run_path('serve.py', run_name='__main__')")


@contextmanager
def _servers(*runs: tuple[Path, list[str]]) -> Iterator[list[tuple[str, subprocess.Popen[str]]]]:
    """Each bundle's serve.py started as a user starts it (all at once: each start imports ONNX Runtime), ready."""
    started = []
    try:
        for folder, args in runs:
            port = _free_port()
            proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "--port", str(port), *args], cwd=folder,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            started.append((f"http://127.0.0.1:{port}", proc))
        for url, _ in started:
            _wait(lambda url=url: True if _health(url) == 200 else None, f"the server at {url} to be ready")
        yield started
    finally:
        for _, proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _log(proc: subprocess.Popen[str]) -> str:
    return proc.stdout.read() if proc.stdout and proc.poll() is not None else ""


def _onnx_bundle(tmp_path: Path, name: str, graph: Any) -> Path:
    """A hand-made ONNX model, inspected as an upload is, as the FastAPI bundle of one measured cell."""
    import onnx

    from engine.artifacts import inspect_onnx

    path = tmp_path / name / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), str(path))
    spec, _ = inspect_onnx(path, name)
    rows = [result(0, "baseline", "onnxruntime", 1, 1.0, settings={"threads": 1})]
    rows[0]["variant_path"], rows[0]["target"] = str(path), "onnx"
    report = {"study": {"id": 9, "name": "hand-made", "model": {"name": name, "spec": spec.to_json()}},
              "environment": None, "results": rows}
    out = tmp_path / f"{name}-bundle"
    write_bundle(deploy_cell(report, 0), "fastapi", out)
    return out


async def _concurrent(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        return await asyncio.gather(*(client.post(f"{url}/v1/predict", json=b) for b in bodies))


def test_fastapi_bundle_serves_checks_batches_and_stops(seeded: Seeded, data_dir: Path, tmp_path: Path) -> None:
    deployed = load_deploy_cell(seeded.study, cell_of(seeded.study, "onnxruntime"))
    out = tmp_path / "bundle"
    write_bundle(deployed, "fastapi", out)
    gate = tmp_path / "load-now"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # 8 samples within 60 s make one batch
    env = {**os.environ, "PARETOSCOPE_SERVE_LOAD_AFTER": str(gate)}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "--port", str(port), "--max-batch", "8",
                             "--max-delay-ms", "60000"], cwd=out, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait(lambda: _health(url), "the server to listen") == 503  # the model waits for the gate
        early = httpx.post(f"{url}/v1/predict", json={"inputs": {}}, timeout=10)
        assert early.status_code == 503 and "loading" in early.json()["detail"]
        gate.touch()
        _wait(lambda: True if _health(url) == 200 else None, "the model to load")

        bad = {
            "unknown input 'x'; the model takes input": {"x": [[0.0] * 16]},
            "missing input 'input'": {},
            "input 'input' has size 3 on axis 1; the model fixes it at 16": {"input": [[0.0] * 3]},
            "input 'input' has 1 dimensions [16]; the model takes 2": {"input": [0.0] * 16},
            "input 'input' takes float32 values (numbers), got bool": {"input": [[True] * 16]},
            "input 'input' is not a rectangular array": {"input": [[0.0] * 16, [0.0] * 15]},
            "input 'input' must be nested lists of numbers, got strings": {"input": [["a"] * 16]},
        }
        for reason, inputs in bad.items():
            reply = httpx.post(f"{url}/v1/predict", json={"inputs": inputs}, timeout=10)
            assert reply.status_code == 422, (reason, reply.text)
            assert reply.json()["detail"].startswith(reason) and "\n" not in reply.json()["detail"]

        rows = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
        replies = asyncio.run(_concurrent(url, [{"inputs": {"input": row[None].tolist()}} for row in rows]))
        assert [r.status_code for r in replies] == [200] * 8
        served = np.array([r.json()["outputs"]["output_0"][0] for r in replies], dtype=np.float32)
        expected = in_process(deployed, {"input": rows})[0]
        np.testing.assert_allclose(served, expected, atol=1e-5)

        # requests of 1, 3 and 4 samples: one call of 8, each request gets its own rows back
        sizes = (1, 3, 4)
        parts = np.split(np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32), np.cumsum(sizes)[:-1])
        replies = asyncio.run(_concurrent(url, [{"inputs": {"input": part.tolist()}} for part in parts]))
        assert [r.status_code for r in replies] == [200] * 3
        for part, reply in zip(parts, replies, strict=True):
            np.testing.assert_allclose(np.array(reply.json()["outputs"]["output_0"], dtype=np.float32),
                                       in_process(deployed, {"input": part})[0], atol=1e-5)

        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert "serve_batch_size_count 2.0" in metrics and "serve_batch_size_sum 16.0" in metrics  # two calls of 8
        assert "serve_max_batch 8.0" in metrics
        assert 'serve_requests_total{code="200"} 11.0' in metrics
        assert 'serve_errors_total{kind="input"} 7.0' in metrics
        assert "serve_request_latency_seconds_bucket" in metrics

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read() if proc.stdout else ""
    assert "Application shutdown complete" in log, log
    assert "dynamic batching up to 8 samples" in log and "dynamic batching is off" not in log, log


def test_batching_only_on_a_batch_axis(tmp_path: Path) -> None:
    """Axis 0 that is not a batch of independent samples (a mean over it; an input whose first axis is fixed): the
    server runs requests one at a time, says so, and each gets what it gets alone."""
    from onnx import TensorProto, helper

    centered = _onnx_bundle(tmp_path, "centered", helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
         helper.make_node("Sub", ["x", "mean"], ["y"])],
        "centered", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["points", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["points", 2])]))
    scaled = _onnx_bundle(tmp_path, "scaled", helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])], "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])]))
    # a request fills the batch with the others, the delay never ends it: merged if batching were on
    with _servers((centered, ["--max-batch", "4", "--max-delay-ms", "60000"]),
                  (scaled, ["--max-batch", "2", "--max-delay-ms", "60000"])) as [(centered_url, centered_proc),
                                                                                (scaled_url, scaled_proc)]:
        a, c = asyncio.run(_concurrent(centered_url, [{"inputs": {"x": [[0.0, 0.0], [2.0, 2.0]]}},
                                                      {"inputs": {"x": [[101.0, 101.0], [101.0, 101.0]]}}]))
        assert (a.status_code, c.status_code) == (200, 200), (a.text, c.text)
        assert a.json()["outputs"]["y"] == [[-1.0, -1.0], [1.0, 1.0]]
        assert c.json()["outputs"]["y"] == [[0.0, 0.0], [0.0, 0.0]]
        replies = asyncio.run(_concurrent(scaled_url, [{"inputs": {"x": [[1.0, 2.0, 3.0]], "scale": [2.0]}},
                                                       {"inputs": {"x": [[1.0, 1.0, 1.0]], "scale": [-1.0]}}]))
        assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
        assert [r.json()["outputs"]["y"] for r in replies] == [[[2.0, 4.0, 6.0]], [[-1.0, -1.0, -1.0]]]
        for url in (centered_url, scaled_url):
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            assert "serve_max_batch 1.0" in metrics and "serve_max_delay_seconds 0.0" in metrics
    logs = {name: _log(proc) for name, proc in (("centered", centered_proc), ("scaled", scaled_proc))}
    assert "dynamic batching is off, requests run one at a time: output 'y' of a sample changes" in logs["centered"]
    assert "dynamic batching is off, requests run one at a time: the inputs' first axes" in logs["scaled"]


def test_one_bad_request_fails_alone_and_big_bodies_are_refused(tmp_path: Path) -> None:
    """An id outside the vocabulary is a 422; a value that fails the runtime fails only its own request of a merged
    call; a body over --max-body-mb is a 413, by its Content-Length or counted when it has none."""
    from onnx import TensorProto, helper, numpy_helper

    tables = np.arange(80, dtype=np.float32).reshape(2, 10, 4)
    bundle = _onnx_bundle(tmp_path, "embed", helper.make_graph(
        [helper.make_node("Gather", ["words", "ids"], ["a"]), helper.make_node("Gather", ["slots", "extra"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["out"])], "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("extra", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", 4])],
        [numpy_helper.from_array(tables[0], "words"), numpy_helper.from_array(tables[1], "slots")]))
    spec = json.loads((bundle / "spec.json").read_text())
    assert [t.get("bound") for t in spec["inputs"]] == [[0, 10], None]  # token ids: the vocabulary; `extra`: unknown

    def body(ids: list[int], extra: list[int]) -> dict[str, Any]:
        return {"inputs": {"ids": [ids], "extra": [extra]}}

    def expected(ids: list[int], extra: list[int]) -> list[Any]:
        return [(tables[0][ids] + tables[1][extra]).tolist()]

    # three good-looking requests of one sample fill the batch: one runtime call unless it fails
    with _servers((bundle, ["--max-batch", "3", "--max-delay-ms", "60000", "--max-body-mb", "0.01"])) as [(url, _)]:
        good, out_of_vocab, fails, other = asyncio.run(_concurrent(url, [
            body([1, 2], [3, 4]), body([1, 99], [0, 0]), body([5, 6], [99, 0]), body([7, 8], [9, 9])]))
        assert (good.status_code, other.status_code) == (200, 200), (good.text, other.text)
        assert good.json()["outputs"]["out"] == expected([1, 2], [3, 4])
        assert other.json()["outputs"]["out"] == expected([7, 8], [9, 9])
        assert out_of_vocab.status_code == 422
        assert out_of_vocab.json()["detail"] == "input 'ids' has value 99 outside [0, 10), the values the model takes"
        assert fails.status_code == 500 and "\n" not in fails.json()["detail"]

        big = body([1] * 3000, [1] * 3000)  # about 18 kB, over the 10 kB limit
        assert httpx.post(f"{url}/v1/predict", json=big, timeout=10).status_code == 413
        chunked = httpx.post(f"{url}/v1/predict", content=iter([json.dumps(big).encode()]), timeout=10,
                             headers={"Content-Type": "application/json"})  # no Content-Length: counted as read
        assert chunked.status_code == 413
        assert chunked.json()["detail"] == ("the body is larger than 0.01 MB (--max-body-mb); send fewer samples per "
                                            "request")
        not_json = httpx.post(f"{url}/v1/predict", content=b"{", timeout=10)
        assert (not_json.status_code, not_json.json()["detail"]) == (422, "the body is not JSON")
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        # the merged call of three that failed, then each alone
        assert "serve_batch_size_count 4.0" in metrics and "serve_batch_size_sum 6.0" in metrics
        assert 'serve_errors_total{kind="too_large"} 2.0' in metrics
        again = asyncio.run(_concurrent(url, [body([i], [i]) for i in range(3)]))  # the server goes on: one call
        assert [r.json()["outputs"]["out"] for r in again] == [expected([i], [i]) for i in range(3)]


def test_served_model_matches_every_bundled_runtime(seeded: Seeded, data_dir: Path, tmp_path: Path) -> None:
    """TorchScript and OpenVINO through the bundle's loader give what the engine's runtimes gave."""
    from engine.deploy.served_model import ServedModel

    torchscript = load_deploy_cell(seeded.study, cell_of(seeded.study, "torchscript"))
    onnx = load_deploy_cell(seeded.study, cell_of(seeded.study, "onnxruntime"))
    openvino = replace(onnx, cell=replace(onnx.cell, runtime="openvino",
                                          settings={"threads": 1, "inference_precision": "f32"}))
    feeds = {"input": np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)}
    for deployed in (torchscript, openvino):
        out = tmp_path / deployed.cell.runtime
        write_bundle(deployed, "fastapi", out)
        assert json.loads((out / "bundle.json").read_text())["runtime"] == deployed.cell.runtime
        served = ServedModel(out).run(feeds)
        np.testing.assert_allclose(served["output_0"], in_process(deployed, feeds)[0], atol=1e-5)


def test_hf_endpoint_handler_runs_in_process(seeded: Seeded, data_dir: Path, tmp_path: Path) -> None:
    import importlib.util

    deployed = load_deploy_cell(seeded.study, cell_of(seeded.study, "onnxruntime"))
    out = tmp_path / "endpoint"
    write_bundle(deployed, "hf-endpoint", out)
    # as the endpoint loads it: the file by its path, from another working directory
    spec = importlib.util.spec_from_file_location("handler", out / "handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.EndpointHandler(str(out))
    rows = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
    reply = handler({"inputs": {"input": rows.tolist()}})
    np.testing.assert_allclose(np.array(reply["outputs"]["output_0"]), in_process(deployed, {"input": rows})[0],
                               atol=1e-5)
    assert handler({"inputs": {"ids": [[1]]}}) == {"error": "unknown input 'ids'; the model takes input"}
    assert "class EndpointHandler" in (out / "handler.py").read_text()


def _parse(folder: Path) -> Any:
    config = triton_model_config().ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)
    return config


def test_triton_configs_parse_with_tritons_own_protobuf(seeded: Seeded, data_dir: Path, tmp_path: Path,
                                                         mlp_onnx_fixed: Path) -> None:
    model_config = triton_model_config()
    onnx = load_deploy_cell(seeded.study, cell_of(seeded.study, "onnxruntime"))
    write_bundle(onnx, "triton", tmp_path / "onnx")
    config = _parse(tmp_path / "onnx" / "model_repository" / "mlp")
    assert (config.name, config.backend, config.max_batch_size) == ("mlp", "onnxruntime", 32)
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("input", model_config.TYPE_FP32, [16])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("output_0", [4])]
    assert config.HasField("dynamic_batching")
    assert [g.kind for g in config.instance_group] == [model_config.ModelInstanceGroup.KIND_CPU]
    assert config.parameters["intra_op_thread_count"].string_value == "1"

    torchscript = load_deploy_cell(seeded.study, cell_of(seeded.study, "torchscript"))
    write_bundle(torchscript, "triton", tmp_path / "ts")
    config = _parse(tmp_path / "ts" / "model_repository" / "mlp")
    assert (config.platform, config.default_model_filename, config.max_batch_size) == ("pytorch_libtorch", "model.pt",
                                                                                       32)
    assert [o.name for o in config.output] == ["output__0"]
    assert (tmp_path / "ts" / "model_repository" / "mlp" / "1" / "model.pt").is_file()

    # an fp16 cell on ONNX Runtime's TensorRT provider, with a fixed batch: GPU instance, TensorRT at FP16, full dims
    fixed = replace(onnx, spec=InputSpec.parse("input:float32[1,16]"),
                    cell=replace(onnx.cell, variant="fp16", runtime="onnxruntime-tensorrt",
                                 variant_path=str(mlp_onnx_fixed), settings={"threads": 1, "device": "cuda:0"}))
    write_bundle(fixed, "triton", tmp_path / "trt")
    config = _parse(tmp_path / "trt" / "model_repository" / "mlp")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 16]
    assert not config.HasField("dynamic_batching")
    assert [g.kind for g in config.instance_group] == [model_config.ModelInstanceGroup.KIND_GPU]
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert (accelerator.name, dict(accelerator.parameters)) == ("tensorrt", {"precision_mode": "FP16"})


# --- which cell, and one-line errors --------------------------------------------------------------------------


def _report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    spec = {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 16]}], "outputs": []}
    return {"study": {"id": 9, "name": "hand-made", "model": {"name": "mlp.onnx", "spec": spec}},
            "environment": None, "results": rows}


def test_the_default_cell_is_the_results_pages_recommendation() -> None:
    rows = [result(0, "baseline", "onnxruntime", 1, 1.0, cosine=1.0),
            result(1, "int8-dynamic", "onnxruntime", 1, 0.4, cosine=0.95),  # fastest, but past the 0.01 drop
            result(2, "fp16", "openvino", 1, 0.6, cosine=0.9995),
            result(3, "baseline", "onnxruntime", 8, 0.2, cosine=1.0)]  # not the smallest batch size
    for row in rows:
        row["variant_path"], row["target"] = "/nowhere/model.onnx", "onnx"
    deployed = deploy_cell(_report(rows), None)
    assert (deployed.cell.cell, deployed.recommended) == (2, True)
    assert deploy_cell(_report(rows), 0).cell.cell == 0

    eager = [result(0, "baseline", "torch", 1, 0.3, cosine=1.0), result(1, "baseline", "onnxruntime", 1, 1.0)]
    eager[1]["variant_path"], eager[1]["target"] = "/nowhere/model.onnx", "onnx"
    with pytest.raises(UserError, match=r"^the recommended cell 0 \(baseline on torch\) runs an in-memory PyTorch "
                                        r"module, with no file to bundle; deploy cell 1 instead .*--cell 1$"):
        deploy_cell(_report(eager), None)


def test_cli_errors_are_one_line(seeded: Seeded, data_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep me")
    eager = cell_of(seeded.study, "torch")
    cases = {
        ("999", "--target", "fastapi"): "no study with id 999",
        (str(seeded.study), "--cell", "42", "--target", "fastapi"): "pick one with --cell",
        (str(seeded.study), "--cell", str(eager), "--target", "fastapi"): f"cell {eager} of study {seeded.study} is",
        (str(seeded.study), "--target", "kubernetes"): "unknown deploy target 'kubernetes'",
    }
    for args, message in cases.items():
        assert main(["deploy", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert main(["deploy", str(seeded.study), "--target", "fastapi", "--out", str(full)]) == 2
    assert "holds no Paretoscope bundle" in capsys.readouterr().err
    assert (full / "mine.txt").read_text() == "keep me"
    # the default: the recommended cell; writing again over a previous bundle replaces it
    out = io.StringIO()
    for _ in range(2):
        assert main(["deploy", str(seeded.study), "--target", "fastapi", "--out", str(tmp_path / "b")], out=out) == 0
    assert "bundle of the recommended cell" in out.getvalue()
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["recommended"] is True


def test_a_redeploy_replaces_only_the_bundles_own_files(seeded: Seeded, data_dir: Path, tmp_path: Path) -> None:
    """Deploying over a previous bundle (a cloned Hub repository, say) keeps what the bundle did not write."""
    deployed = load_deploy_cell(seeded.study, cell_of(seeded.study, "onnxruntime"))
    out = tmp_path / "repo"
    write_bundle(deployed, "hf-endpoint", out)
    (out / ".git").mkdir()
    (out / ".git" / "config").write_text("[core]\n")
    (out / "notes.md").write_text("mine")
    (out / "model" / "LICENSE").write_text("mine too")
    (out / "README.md").write_text("edited")  # the bundle's own file: replaced
    write_bundle(deployed, "fastapi", out)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == {".git/config", "notes.md", "model/LICENSE", "serve.py", "served_model.py", "requirements.txt",
                     "Dockerfile", "README.md", "spec.json", "bundle.json", "example.json", "model/model.onnx"}
    assert "handler.py" not in files  # the previous bundle's, which this one does not write
    assert (out / ".git" / "config").read_text() == "[core]\n" and (out / "notes.md").read_text() == "mine"
    assert (out / "README.md").read_text() != "edited"
    assert json.loads((out / "bundle.json").read_text())["files"] == sorted(files - {".git/config", "notes.md",
                                                                                     "model/LICENSE"})


def test_deploy_panel_offers_the_targets(seeded: Seeded, data_dir: Path) -> None:
    from streamlit.testing.v1 import AppTest

    script = ("from engine.report.deploy_panel import deploy_panel\n"
              f"deploy_panel({seeded.study}, None)\n"
              f"deploy_panel({seeded.study}, {cell_of(seeded.study, 'torch')}, key='eager')\n")
    at = AppTest.from_string(script, default_timeout=60).run()
    assert not at.exception, at.exception
    assert list(at.radio[0].options) == ["FastAPI server (Docker)", "Triton model repository",
                                         "Hugging Face Inference Endpoint"]
    assert "is n/a" in at.info[0].value


def test_a_cell_result_without_its_file_says_so(tmp_path: Path) -> None:
    rows = [result(0, "baseline", "onnxruntime", 1, 1.0, cosine=1.0)]
    rows[0]["variant_path"], rows[0]["target"] = str(tmp_path / "gone.onnx"), "onnx"
    deployed = deploy_cell(_report(rows), 0)
    assert isinstance(deployed.cell, CellResult)
    with pytest.raises(UserError, match="no longer in the data folder; run the study again"):
        write_bundle(deployed, "fastapi", tmp_path / "out")
    assert not (tmp_path / "out").exists()
