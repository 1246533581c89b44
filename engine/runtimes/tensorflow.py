"""TensorFlow on the CPU: a SavedModel's serving signature, or a Keras file (safe mode) called in a tf.function.

The baseline of TensorFlow models: their reference outputs come from it, and their speedups are over it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from engine.runtimes.base import Runtime, RuntimeOptions, Session, register
from engine.variants import Variant


class TensorFlowSession(Session):
    def __init__(self, loaded: Any, input_names: list[str]) -> None:
        from engine.tf_models import import_tf

        super().__init__(input_names)
        self._tf = import_tf()
        self._loaded = loaded
        unknown = [n for n in input_names if n not in loaded.input_names]
        if unknown:
            raise ValueError(f"the TensorFlow model has no inputs named {unknown}; it has {loaded.input_names}")
        self._dtypes = {n: t.dtype for n, t in zip(loaded.input_names, loaded.inputs, strict=True)}

    def _prepare(self, feeds: dict[str, np.ndarray]) -> Any:
        # in the model's own order: the signature is called by name, a Keras model by position
        return [self._tf.constant(np.ascontiguousarray(feeds[n]), dtype=self._dtypes[n])
                for n in self._loaded.input_names]

    def _run(self, prepared: Any) -> Any:
        # eager TensorFlow on the CPU returns when the call's ops have run
        return self._loaded.call(*prepared)

    def _fetch(self, outputs: Any) -> list[np.ndarray]:
        arrays = [np.asarray(o.numpy()) for o in outputs]
        return [a.astype(np.float32) if a.dtype.kind == "f" else a for a in arrays]

    def _close(self) -> None:
        self._loaded = None


@register
class TensorFlowCpu(Runtime[RuntimeOptions]):
    id = "tensorflow"
    consumes = "tensorflow"
    summary = "TensorFlow: the SavedModel's serving signature, or a .keras model (safe mode) in a tf.function"
    requires = ("tensorflow",)

    @classmethod
    def available(cls) -> tuple[bool, str | None]:
        from engine.tf_models import INSTALL_HINT

        if importlib.util.find_spec("tensorflow") is None:
            return False, f"TensorFlow is not installed (an optional extra): {INSTALL_HINT}"
        return True, None

    def load(self, variant: Variant) -> Session:
        from engine.tf_models import KERAS, SAVEDMODEL, import_tf, load

        tf = import_tf()
        try:
            # before TensorFlow's first op in this process; afterwards they stay as they were (read back below)
            tf.config.threading.set_intra_op_parallelism_threads(self.settings.threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass
        fmt = SAVEDMODEL if variant.file.is_dir() else KERAS
        session = TensorFlowSession(load(variant.file, fmt, variant.file.name), variant.input_names)
        session.applied.update({
            "tensorflow": tf.__version__, "call": "serving signature" if fmt == SAVEDMODEL else "keras (safe mode)",
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        })
        return session
