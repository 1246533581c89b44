"""OpenVINO on the CPU, reading the ONNX variant directly (or a TensorFlow SavedModel with its own frontend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from engine.config import param
from engine.measure.profile import OpTime
from engine.runtimes.base import Runtime, RuntimeOptions, Session, register
from engine.variants import Variant


class OpenVinoSession(Session):
    def __init__(self, compiled: Any, input_names: list[str], output_names: list[str] | None = None) -> None:
        super().__init__(input_names)
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._outputs = _in_order(list(compiled.outputs), output_names)
        # A port may carry several tensor names (converters add aliases); feed by port index.
        self._ports: dict[str, int] = {}
        for index, port in enumerate(compiled.inputs):
            for name in port.get_names():
                self._ports[name] = index
        unknown = [n for n in input_names if n not in self._ports]
        if unknown:
            raise ValueError(f"OpenVINO model has no inputs named {unknown}; it has {sorted(self._ports)}")

    def _prepare(self, feeds: dict[str, np.ndarray]) -> Any:
        import openvino as ov

        # Tensors share the numpy memory, so run() does no input copy.
        return {self._ports[n]: ov.Tensor(np.ascontiguousarray(a), shared_memory=True) for n, a in feeds.items()}

    def _run(self, prepared: Any) -> Any:
        self._request.infer(prepared, share_inputs=True, share_outputs=True)
        return self._request

    def _fetch(self, outputs: Any) -> list[np.ndarray]:
        arrays = [np.array(outputs.get_tensor(o).data, copy=True) for o in self._outputs]
        return [a.astype(np.float32) if a.dtype.kind == "f" else a for a in arrays]


def _in_order(ports: list[Any], names: list[str] | None) -> list[Any]:
    """The output ports in the order of `names` (the ONNX variant's), where each name is one port's."""
    if not names:
        return ports
    by_name = {name: port for port in ports for name in port.get_names()}
    return [by_name[n] for n in names] if all(n in by_name for n in names) and len(names) == len(ports) else ports


@dataclass(frozen=True)
class OpenVinoOptions(RuntimeOptions):
    # f32 unless asked: on CPUs with bf16 units the plugin would otherwise run the fp32 baseline in bf16, so its
    # speed and accuracy would not be the variant's (inference_precision=bf16 opts in)
    inference_precision: Literal["f32", "bf16", "f16"] = param("f32", "OpenVINO's INFERENCE_PRECISION_HINT")
    tensorflow_frontend: bool = param(
        True, "a TensorFlow SavedModel's unquantized variant: read the SavedModel with OpenVINO's TensorFlow "
              "frontend (openvino.convert_model) instead of its tf2onnx ONNX, falling back to the ONNX")


@register
class OpenVinoCpu(Runtime[OpenVinoOptions]):
    id = "openvino"
    consumes = "onnx"
    summary = "OpenVINO, CPU plugin (latency hint, one stream)"
    Options = OpenVinoOptions
    requires = ("openvino",)

    def load(self, variant: Variant) -> Session:
        session = self._open(variant)
        # the cell's notes say which path it measured (the profile's second session reads the same)
        source = session.applied.get("model_source")
        if source == "savedmodel":
            variant.notes.append("OpenVINO read the SavedModel with its TensorFlow frontend (openvino.convert_model), "
                                 "not the tf2onnx ONNX")
        elif session.applied.get("tensorflow_frontend_error"):
            variant.notes.append(f"OpenVINO read the tf2onnx ONNX: its TensorFlow frontend failed on the SavedModel "
                                 f"({session.applied['tensorflow_frontend_error']})")
        return session

    def profile(self, session: Session, variant: Variant, feeds: dict[str, np.ndarray], runs: int) -> list[OpTime]:
        """OpenVINO's performance counters on a second compilation with PERF_COUNT on: each executed layer's
        time and the kernel the plugin chose for it (e.g. brgemm_avx512_amx_I8 or a ref_ fallback)."""
        with self._open(variant, perf_count=True) as profiled:
            prepared = profiled.prepare(feeds)
            found = []
            for _ in range(runs):
                request = profiled.run(prepared)
                found += [OpTime(info.node_name, info.node_type, info.exec_type, info.real_time.total_seconds() * 1e3)
                          for info in request.get_profiling_info() if str(info.status).endswith("EXECUTED")]
        return found

    def _open(self, variant: Variant, perf_count: bool = False) -> OpenVinoSession:
        import openvino as ov

        core = ov.Core()
        model, source, failure = self._read(core, variant)
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": self.settings.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        config["INFERENCE_PRECISION_HINT"] = self.settings.options.inference_precision
        if perf_count:
            config["PERF_COUNT"] = True
        compiled = core.compile_model(model, "CPU", config)
        # a SavedModel's outputs follow its signature; the ONNX variant's order is every other runtime's
        order = [o.get_any_name() for o in core.read_model(str(variant.file)).outputs] if source == "savedmodel" \
            else None
        session = OpenVinoSession(compiled, variant.input_names, order)
        if variant.source is not None:
            session.applied["model_source"] = source
            if failure:
                session.applied["tensorflow_frontend_error"] = failure
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        session.applied.update({"openvino": ov.__version__, "performance_hint": "LATENCY", "num_streams": 1,
                                "inference_precision": getattr(precision, "type_name", str(precision)),
                                "intra_op_threads": int(compiled.get_property("INFERENCE_NUM_THREADS"))})
        return session

    def _read(self, core: Any, variant: Variant) -> tuple[Any, str, str | None]:
        """The model to compile, where it came from ("onnx" or "savedmodel") and why the SavedModel was not read
        when it was offered and failed."""
        import openvino as ov
        from openvino.tools.ovc.error import Error as ConversionError

        if variant.source is None or not self.settings.options.tensorflow_frontend:
            return core.read_model(str(variant.file)), "onnx", None
        try:
            return ov.convert_model(str(variant.source)), "savedmodel", None
        # the frontend's own failures (an op it cannot convert, a graph it cannot read) are not the cell's
        except (RuntimeError, ValueError, TypeError, ConversionError, ov.frontend.OpConversionFailure,
                ov.frontend.GeneralFailure, ov.frontend.NotImplementedFailure) as exc:
            return core.read_model(str(variant.file)), "onnx", f"{type(exc).__name__}: {str(exc).splitlines()[0]}"[:200]
