"""What machine a benchmark ran on: CPU, clocks, temperature, load, threads, packages, models.

Every report carries this, so a figure is never separated from the machine that produced it.
Each probe reads what Linux exposes (``/proc``, ``/sys``) and records ``None`` where a file is
absent or unreadable (containers often hide cpufreq and thermal zones): absent, never guessed.

Backbone MACs are counted from the ONNX graph itself (Conv, Gemm, MatMul and their quantised
forms, with shapes from ``onnx.shape_inference``), so no torch is needed at run time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

PACKAGES = (
    "edge-runtime",
    "numpy",
    "numba",
    "onnxruntime",
    "ai-edge-litert",
    "tflite-runtime",
    "opencv-python-headless",
    "opencv-python",
    "onnx",
    "torch",
    "scikit-learn",
    "matplotlib",
    "snntorch",
    "faiss-cpu",
    "jetson-stats",
    "smbus2",
)

# node type -> (index of the data input, index of the weight input) for MAC counting
_CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's name: x86 ``model name``, else the Arm board ``Model``/``Hardware`` line."""
    text = _read(cpuinfo) or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware", "Processor", "cpu model"):
        if fields.get(key):
            return fields[key]
    return platform.processor() or platform.machine()


def cpu_clocks(root: str | Path = "/sys/devices/system/cpu") -> dict[str, Any]:
    """Governor and current/max frequency (MHz) per CPU where cpufreq is exposed."""
    cpus = sorted(Path(root).glob("cpu[0-9]*"), key=lambda p: int(p.name[3:]))
    governors, current, maximum = {}, {}, {}
    for cpu in cpus:
        freq = cpu / "cpufreq"
        governor = _read(freq / "scaling_governor")
        if governor is not None:
            governors[cpu.name] = governor
        for name, target in (("scaling_cur_freq", current), ("cpuinfo_max_freq", maximum)):
            value = _read(freq / name)
            if value is not None and value.isdigit():
                target[cpu.name] = int(value) / 1000.0
    return {"governor": sorted(set(governors.values())) or None, "cur_mhz": current or None, "max_mhz": maximum or None}


def thermal_state(root: str | Path = "/sys/class/thermal") -> dict[str, float] | None:
    """Temperature (deg C) of every readable thermal zone, by zone type."""
    zones: dict[str, float] = {}
    for zone in sorted(Path(root).glob("thermal_zone*")):
        temp = _read(zone / "temp")
        if temp is None or not temp.lstrip("-").isdigit():
            continue
        kind = _read(zone / "type") or zone.name
        zones[kind if kind not in zones else f"{kind}.{zone.name}"] = int(temp) / 1000.0
    return zones or None


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape the figures (absent ones omitted)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def file_digest(path: str | Path) -> dict[str, Any]:
    """sha256 and size of a model file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "sha256": digest.hexdigest(), "bytes": os.path.getsize(path)}


def _dims(value_info: Any) -> list[int] | None:
    """Concrete dimensions, or None when any is symbolic or the shape is unknown."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape") or any(not d.HasField("dim_value") for d in tensor.shape.dim):
        return None
    return [d.dim_value for d in tensor.shape.dim]


def count_macs(model_path: str | Path) -> dict[str, Any]:
    """Multiply-accumulates per image of an ONNX model, by operator type.

    Conv: output elements x (C_in / groups) x k_h x k_w; MatMul/Gemm: output elements x K. The
    quantised forms (QDQ graphs keep plain Conv; QOperator graphs use QLinearConv) count the same.
    Element-wise ops, pooling and activations are not MACs and are left out. Symbolic input
    dimensions (the batch) are pinned to 1. Where a shape stays symbolic (torch's same-padding
    convs compute their pads at run time), the graph is first constant-folded by ONNX Runtime's
    basic optimiser, which does not change what is multiplied; nodes still unresolved are listed
    under ``uncounted_nodes`` rather than guessed.
    """
    import onnx  # host/bench dependency; only imported when counting

    model = onnx.load(str(model_path))
    result = dict(_count_macs(model), constant_folded=False)
    if result["uncounted_nodes"]:
        folded = _fold_constants(model_path)
        if folded is not None:
            result = _count_macs(folded)
            result["constant_folded"] = True
    return result


def _count_macs(model: Any) -> dict[str, Any]:
    import onnx

    for graph_input in model.graph.input:
        for dim in graph_input.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    shapes: dict[str, list[int] | None] = {}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        shapes[info.name] = _dims(info)
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    by_op: dict[str, int] = {}
    uncounted: list[str] = []
    for node in graph.node:
        if node.op_type not in _CONV_OPS and node.op_type not in _MATMUL_OPS:
            continue
        _, w_index = _CONV_OPS.get(node.op_type) or _MATMUL_OPS[node.op_type]
        weight, out = shapes.get(node.input[w_index]), shapes.get(node.output[0])
        if not weight or not out:
            uncounted.append(node.name or node.op_type)
            continue
        if node.op_type in _CONV_OPS:
            macs = _prod(out) * _prod(weight[1:])  # weight: (C_out, C_in/groups, k_h, k_w)
        elif node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            macs = _prod(out) * weight[-1]
        else:
            macs = _prod(out) * (weight[-2] if len(weight) >= 2 else weight[0])
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    return {"macs": sum(by_op.values()), "by_op": by_op, "uncounted_nodes": uncounted}


def _fold_constants(model_path: str | Path) -> Any:
    """The model after ONNX Runtime's basic (constant-folding) optimisation, or None without ORT."""
    import tempfile

    import onnx

    try:
        import onnxruntime as ort
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def _prod(values: list[int]) -> int:
    total = 1
    for v in values:
        total *= int(v)
    return total


def describe_model(model_path: str | Path) -> dict[str, Any]:
    """sha256, size and MACs of a backbone file; a .tflite borrows MACs from its ONNX sibling."""
    path = Path(model_path)
    info = file_digest(path)
    onnx_path = path if path.suffix == ".onnx" else path.with_name("fp32.onnx")
    if onnx_path.exists():
        try:
            info["macs"] = count_macs(onnx_path)["macs"]
            info["macs_from"] = onnx_path.name
        except ImportError:
            info["macs"] = None
            info["macs_from"] = "not counted: the onnx package is not installed"
    else:
        info["macs"] = None
        info["macs_from"] = f"not counted: no ONNX graph beside {path.name}"
    return info


def execution_options() -> dict[str, Any]:
    """Where backbones can run here: ONNX Runtime's providers in this build, the LiteRT delegates
    whose libraries load (the interpreter's own XNNPACK CPU kernels always can)."""
    import ctypes

    from edge_runtime.model.providers import LITERT_DELEGATES

    try:
        import onnxruntime as ort

        providers: list[str] | None = ort.get_available_providers()
    except ImportError:
        providers = None
    delegates = ["cpu (XNNPACK)"]
    for name, library in LITERT_DELEGATES.items():
        try:
            ctypes.CDLL(library)
            delegates.append(name)
        except OSError:
            continue
    return {"onnxruntime": providers, "litert": delegates}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def capture_environment(model_paths: list[str | Path] = (), *, threads: int | None = None) -> dict[str, Any]:
    """Everything the report prints about the machine, as a JSON-able dict.

    ``threads`` is how many threads the benchmark asked its runtimes for; the load average is
    recorded because figures taken on a busy machine are not figures of an idle one.
    """
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "host": socket.gethostname(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "clocks": cpu_clocks(),
        "thermal_c": thermal_state(),
        "load_average": load_average(),
        "threads": threads,
        "packages": package_versions(),
        "execution": execution_options(),
        "models": [describe_model(p) for p in model_paths if Path(p).exists()],
    }


def environment_markdown(env: dict[str, Any]) -> str:
    """The environment as a short Markdown list for the report."""
    clocks = env.get("clocks") or {}
    lines = [
        f"- host: `{env['host']}`, measured {env['time_utc']}",
        f"- CPU: {env['cpu_model']} x {env['cpu_count']} (usable: {env['cpus_usable']}), "
        f"threads used: {env['threads'] if env['threads'] is not None else 'runtime default'}",
        f"- governor: {', '.join(clocks.get('governor') or []) or 'not readable'}; "
        f"frequency: {_mhz(clocks.get('cur_mhz'))} (max {_mhz(clocks.get('max_mhz'))})",
        f"- thermal: {', '.join(f'{k} {v:.1f} C' for k, v in (env.get('thermal_c') or {}).items()) or 'not readable'}",
        f"- load average (1/5/15 min) at capture: {env.get('load_average')}",
        f"- platform: {env['platform']}, Python {env['python']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
    ]
    if "execution" in env:  # reports from before execution providers were recorded lack it
        execution = env["execution"]
        lines.append(
            f"- execution: onnxruntime providers {', '.join(execution['onnxruntime'] or ['not installed'])}; "
            f"LiteRT {', '.join(execution['litert'])}"
        )
    for model in env.get("models", []):
        macs = (
            f"{model['macs'] / 1e6:.1f} M MACs/image ({model['macs_from']})"
            if model.get("macs")
            else model.get("macs_from")
        )
        lines.append(
            f"- model `{model['path']}`: {model['bytes'] / 1e6:.2f} MB, sha256 `{model['sha256'][:16]}...`, {macs}"
        )
    return "\n".join(lines)


def _mhz(values: dict[str, float] | None) -> str:
    if not values:
        return "not readable"
    low, high = min(values.values()), max(values.values())
    return f"{low:.0f} MHz" if low == high else f"{low:.0f}-{high:.0f} MHz"


__all__ = [
    "capture_environment",
    "count_macs",
    "cpu_clocks",
    "cpu_model",
    "describe_model",
    "environment_markdown",
    "execution_options",
    "file_digest",
    "package_versions",
    "thermal_state",
]
