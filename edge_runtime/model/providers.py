"""Where a backbone runs: ONNX Runtime execution providers and LiteRT delegates, chosen by name.

A request is a list in order of preference (``--providers tensorrt,cuda,cpu``). Names a runtime
does not have, or that fail to load on this machine, are dropped with one warning line, and the
backbone runs on the CPU: a camera keeps classifying on a board whose GPU libraries are missing.
What was asked for and what runs is kept in ``Execution`` (run summary, bench environment).
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

# short name -> ONNX Runtime provider; full provider names are accepted as they are
ONNX_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "acl": "ACLExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# short name -> LiteRT delegate library (a path to a delegate .so is accepted too); cpu is the
# interpreter's own XNNPACK kernels
LITERT_DELEGATES = {"gpu": "libtensorflowlite_gpu_delegate.so", "edgetpu": "libedgetpu.so.1"}
CPU_NAMES = ("cpu", "xnnpack")


def warn_stderr(message: str) -> None:
    print(f"edgert: warning: {message}", file=sys.stderr, flush=True)


@dataclass
class Execution:
    """What a backbone was asked to run on and what it runs on (names as the runtime spells them)."""

    runtime: str
    requested: list[str]
    active: list[str]
    dropped: dict[str, str] = field(default_factory=dict)  # requested name -> why it is not used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_providers(text: str | None) -> list[str] | None:
    """``"tensorrt, cuda,cpu"`` -> ``["tensorrt", "cuda", "cpu"]``; None or empty -> None (runtime default).

    >>> parse_providers("TensorRT, cuda,cpu")
    ['tensorrt', 'cuda', 'cpu']
    """
    if not text:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    return [name if name.endswith(("ExecutionProvider", ".so")) or "/" in name else name.lower() for name in names]


def onnx_providers(
    requested: list[str] | None, available: list[str], warn: Callable[[str], None] = warn_stderr
) -> tuple[list[str], dict[str, str]]:
    """ONNX Runtime providers to ask for, in order, CPU last; and the requested names dropped (why)."""
    chosen, dropped = [], {}
    for name in requested or ["cpu"]:
        provider = ONNX_PROVIDERS.get(name, name)
        if provider not in available:
            dropped[name] = (
                "unknown provider name"
                if name not in ONNX_PROVIDERS and not name.endswith("ExecutionProvider")
                else "not in this onnxruntime build"
            )
        elif provider not in chosen:
            chosen.append(provider)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    if dropped:
        warn(
            f"execution provider {', '.join(dropped)} unavailable ({'; '.join(sorted(set(dropped.values())))}; "
            f"this onnxruntime offers {', '.join(available)}): running on {', '.join(chosen)}"
        )
    return chosen, dropped


def litert_delegates(
    requested: list[str] | None, load: Callable[[str], Any], warn: Callable[[str], None] = warn_stderr
) -> tuple[list[Any], list[str], dict[str, str]]:
    """LiteRT delegates loaded in order of preference (the first that loads is used), the active
    names, and the requested names dropped (why)."""
    dropped: dict[str, str] = {}
    for name in requested or ["cpu"]:
        if name in CPU_NAMES:
            break
        if name in ONNX_PROVIDERS or name.endswith("ExecutionProvider"):
            dropped[name] = "an ONNX Runtime provider, not a LiteRT delegate"
            continue
        library = LITERT_DELEGATES.get(name, name)
        try:
            ctypes.CDLL(library)  # first: LiteRT's Delegate object prints a traceback when its library is missing
            delegate = load(library)
        except (ValueError, OSError, RuntimeError) as err:
            dropped[name] = str(err).splitlines()[0] if str(err) else f"{library}: {type(err).__name__}"
            continue
        _report(dropped, name, warn)
        return [delegate], [name], dropped
    _report(dropped, "cpu (XNNPACK)", warn)
    return [], ["cpu"], dropped


def _report(dropped: dict[str, str], running: str, warn: Callable[[str], None]) -> None:
    if dropped:
        warn(f"LiteRT delegate {', '.join(f'{k}: {v}' for k, v in dropped.items())}; running on {running}")
