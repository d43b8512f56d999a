"""ONNX Runtime backbone (fp32 or QDQ int8 models) on the execution providers asked for, CPU last."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.model.base import Backbone, Inference
from edge_runtime.model.providers import Execution, onnx_providers


class OnnxBackbone(Backbone):
    runtime = "onnxruntime"

    def _open(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle workers sleep instead of spinning: on a device the capture thread and the adapter
        # share the cores, and spinning threads would steal them between frames.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers, dropped = onnx_providers(self.providers, ort.get_available_providers(), self.warn)
        try:
            self._session = ort.InferenceSession(str(self.model_path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            raise EdgeRuntimeError(f"onnxruntime cannot load {self.model_path}: {str(err).splitlines()[0]}") from None
        active = self._session.get_providers()
        # A provider in the build whose libraries are missing (CUDA without libcudart) is skipped by
        # onnxruntime itself at session creation: named here too.
        failed = {p: "failed to initialise on this machine" for p in providers if p not in active}
        if failed:
            self.warn(f"execution provider {', '.join(failed)} failed to initialise: running on {', '.join(active)}")
        self.execution = Execution("onnxruntime", self.providers or ["cpu"], active, {**dropped, **failed})
        self._input = self.card.input.name
        self._names = [self.card.outputs[k].name for k in ("features", "logits") if k in self.card.outputs]

    def run(self, batch: np.ndarray) -> Inference:
        outputs = self._session.run(self._names, {self._input: batch})
        return Inference(outputs[0], outputs[1] if len(outputs) > 1 else None)
