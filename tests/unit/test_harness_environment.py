"""Environment capture: CPU, clocks and thermal from fake trees; MACs counted from ONNX graphs."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from edge_runtime.bench import environment as env

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def test_cpu_model_x86_and_arm(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Intel(R) Core(TM) i5-8259U CPU @ 2.30GHz\n\nprocessor\t: 1\n")
    assert env.cpu_model(x86) == "Intel(R) Core(TM) i5-8259U CPU @ 2.30GHz"
    pi = tmp_path / "pi"
    pi.write_text(
        "processor\t: 0\nBogoMIPS\t: 108.00\n\nRevision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
    )
    assert env.cpu_model(pi) == "Raspberry Pi 5 Model B Rev 1.0"


def test_clocks_and_thermal_where_readable(tmp_path):
    cpus = tmp_path / "cpu"
    for i, (gov, cur) in enumerate([("performance", 2400000), ("performance", 1800000)]):
        freq = cpus / f"cpu{i}" / "cpufreq"
        freq.mkdir(parents=True)
        (freq / "scaling_governor").write_text(gov + "\n")
        (freq / "scaling_cur_freq").write_text(f"{cur}\n")
        (freq / "cpuinfo_max_freq").write_text("2400000\n")
    (cpus / "cpu2").mkdir()  # offline or hidden: no cpufreq directory
    clocks = env.cpu_clocks(cpus)
    assert clocks["governor"] == ["performance"]
    assert clocks["cur_mhz"] == {"cpu0": 2400.0, "cpu1": 1800.0}
    assert env.cpu_clocks(tmp_path / "absent") == {"governor": None, "cur_mhz": None, "max_mhz": None}

    thermal = tmp_path / "thermal"
    zone = thermal / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("51234\n")
    (thermal / "thermal_zone1").mkdir()  # no temp file
    assert env.thermal_state(thermal) == {"cpu-thermal": pytest.approx(51.234)}
    assert env.thermal_state(tmp_path / "absent") is None


def small_graph(path, *, batch_param: bool = True):
    """x(N,3,8,8) -> Conv 4x3x3x3 pad1 -> depthwise Conv 4x1x3x3 stride2 -> flatten -> Gemm(64->5) -> MatMul(5->2)."""
    n = "N" if batch_param else 1
    w1 = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w1")
    w2 = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w2")
    w3 = numpy_helper.from_array(np.ones((5, 64), np.float32), "w3")
    w4 = numpy_helper.from_array(np.ones((5, 2), np.float32), "w4")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=4, name="dw"),
        helper.make_node("Reshape", ["c2", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w3"], ["g"], transB=1, name="fc"),
        helper.make_node("MatMul", ["g", "w4"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 2])],
        initializer=[w1, w2, w3, w4, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_count_macs_by_hand(tmp_path):
    macs = env.count_macs(small_graph(tmp_path / "m.onnx"))
    conv = 4 * 8 * 8 * (3 * 3 * 3)  # output elements x C_in x k x k
    depthwise = 4 * 4 * 4 * (1 * 3 * 3)  # groups = C: one input channel per output
    assert macs["by_op"] == {"Conv": conv + depthwise, "Gemm": 5 * 64, "MatMul": 2 * 5}
    assert macs["macs"] == conv + depthwise + 5 * 64 + 2 * 5
    assert macs["uncounted_nodes"] == []


def test_runtime_computed_padding_is_resolved_by_constant_folding(tmp_path):
    """torch's same-padding convs compute pads with Shape/Sub/Concat: shape inference alone cannot."""
    pytest.importorskip("onnxruntime")
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    # As torch writes it: pads (float, reversed, transposed) -> Slice step -1 -> Cast to int64.
    pads_f = numpy_helper.from_array(np.array([1, 1, 0, 0, 1, 1, 0, 0], np.float32), "pads_f")
    starts, ends, step = (
        numpy_helper.from_array(np.array([v], np.int64), name)
        for v, name in ((-1, "starts"), (-(2**62), "ends"), (-1, "step"))
    )
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [
        helper.make_node("Slice", ["pads_f", "starts", "ends", "axes", "step"], ["pads_r"]),
        helper.make_node("Cast", ["pads_r"], ["pads"], to=TensorProto.INT64),
        helper.make_node("Pad", ["x", "pads"], ["xp"]),
        helper.make_node("Conv", ["xp", "w"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w, pads_f, starts, ends, step, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "pad.onnx")
    macs = env.count_macs(tmp_path / "pad.onnx")
    assert macs["macs"] == 2 * 6 * 6 * 27
    assert macs["uncounted_nodes"] == []


def test_describe_model_and_environment(tmp_path):
    path = small_graph(tmp_path / "fp32.onnx")
    info = env.describe_model(path)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["bytes"] == path.stat().st_size
    assert info["macs"] == env.count_macs(path)["macs"]
    tflite = tmp_path / "int8.tflite"
    tflite.write_bytes(b"TFL3")
    assert env.describe_model(tflite)["macs_from"] == "fp32.onnx"
    lonely = tmp_path / "other" / "int8.tflite"
    lonely.parent.mkdir()
    lonely.write_bytes(b"TFL3")
    assert env.describe_model(lonely)["macs"] is None

    captured = env.capture_environment([path, tmp_path / "missing.onnx"], threads=2)
    assert captured["threads"] == 2 and captured["cpu_count"] >= 1
    assert [m["path"] for m in captured["models"]] == [str(path)]
    assert "numpy" in captured["packages"]
    text = env.environment_markdown(captured)
    assert captured["host"] in text and "M MACs/image" in text and "threads used: 2" in text
    assert "CPUExecutionProvider" in captured["execution"]["onnxruntime"]
    assert captured["execution"]["litert"][0] == "cpu (XNNPACK)"
    assert "execution: onnxruntime providers" in text and "CPUExecutionProvider" in text
