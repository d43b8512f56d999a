"""LiteRT (TFLite) backbone through ``ai_edge_litert``; ``tflite_runtime`` only as a fallback.

``tflite_runtime`` is the last release under that name: it breaks under numpy 2 and, for lack of
XNNPACK delegation, runs int8 15-20x slower on x86. It is used only where ai_edge_litert is absent.
"""

from __future__ import annotations

import numpy as np

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.model.base import Backbone, Inference, dequantize
from edge_runtime.model.providers import Execution, litert_delegates

try:
    from ai_edge_litert.interpreter import Interpreter, load_delegate
except ImportError:  # pragma: no cover - only on boards with the legacy package
    try:
        from tflite_runtime.interpreter import Interpreter, load_delegate  # type: ignore[no-redef]
    except ImportError:
        Interpreter = load_delegate = None  # type: ignore[assignment,misc]


class LiteRTBackbone(Backbone):
    runtime = "litert"

    def _open(self) -> None:
        if Interpreter is None:
            raise EdgeRuntimeError("no LiteRT interpreter installed: pip install ai-edge-litert")
        delegates, active, dropped = litert_delegates(self.providers, load_delegate, self.warn)
        try:
            try:
                self._interpreter = self._interpret(delegates)
            except (ValueError, RuntimeError) as err:
                if not delegates:
                    raise
                dropped[active[0]] = f"the delegate cannot run this model ({str(err).splitlines()[0]})"
                self.warn(f"LiteRT delegate {active[0]}: {dropped[active[0]]}; running on cpu (XNNPACK)")
                self._interpreter, active = self._interpret([]), ["cpu"]
        except (ValueError, RuntimeError) as err:
            raise EdgeRuntimeError(f"LiteRT cannot load {self.model_path}: {str(err).splitlines()[0]}") from None
        self.execution = Execution("litert", self.providers or ["cpu"], active, dropped)
        inputs = self._interpreter.get_input_details()
        self._input_index = inputs[0]["index"]
        by_name = {d["name"]: d["index"] for d in self._interpreter.get_output_details()}
        self._outputs = []
        for key in ("features", "logits"):
            if key in self.card.outputs:
                spec = self.card.outputs[key]
                if spec.name not in by_name:
                    raise EdgeRuntimeError(f"{self.model_path} has no output {spec.name!r} named in its card")
                self._outputs.append((by_name[spec.name], spec))

    def _interpret(self, delegates: list) -> "Interpreter":
        interpreter = Interpreter(
            model_path=str(self.model_path), num_threads=self.threads, experimental_delegates=delegates or None
        )
        interpreter.allocate_tensors()
        return interpreter

    def run(self, batch: np.ndarray) -> Inference:
        # The exported graph has a fixed batch of one; a batch of N runs N times.
        rows: list[list[np.ndarray]] = [[] for _ in self._outputs]
        for row in batch:
            self._interpreter.set_tensor(self._input_index, row[None])
            self._interpreter.invoke()
            for out, (index, spec) in zip(rows, self._outputs):
                out.append(dequantize(self._interpreter.get_tensor(index), spec))
        merged = [np.concatenate(r, axis=0) for r in rows]
        return Inference(merged[0], merged[1] if len(merged) > 1 else None)
