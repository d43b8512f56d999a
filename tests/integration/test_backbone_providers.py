"""Execution providers and LiteRT delegates: chosen by name, recorded, and a missing one falls
back to the CPU with one warning line (real onnxruntime and LiteRT builds of this machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.model import load_backbone, parse_providers
from edge_runtime.model.providers import onnx_providers

PHOTO = Path("/usr/share/doc/opencv-doc/examples/data/orange.jpg")
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def _classify(backbone) -> str:
    out = backbone.infer(cv2.imread(str(PHOTO)))
    return backbone.card.labels[int(out.logits.argmax())]


@pytest.mark.parametrize("requested", [["tensorrt", "cuda", "cpu"], ["cuda"], ["TensorrtExecutionProvider"]])
def test_onnx_gpu_providers_missing_fall_back_to_cpu_with_one_warning(exported, requested):
    import onnxruntime as ort

    if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()):
        pytest.skip("this onnxruntime build has GPU providers")
    warnings: list[str] = []
    backbone = load_backbone(exported["int8.onnx"], threads=1, providers=requested, warn=warnings.append)
    assert backbone.execution.active == ["CPUExecutionProvider"]
    assert backbone.execution.requested == requested and set(backbone.execution.dropped) == set(requested) - {"cpu"}
    assert len(warnings) == 1 and "running on CPUExecutionProvider" in warnings[0]
    assert _classify(backbone) == "orange"  # and it still works


def test_onnx_cpu_only_asks_for_nothing_and_warns_nothing(exported):
    warnings: list[str] = []
    backbone = load_backbone(exported["int8.onnx"], threads=1, warn=warnings.append)
    assert backbone.execution.active == ["CPUExecutionProvider"] and warnings == []


def test_onnx_provider_order_is_kept_and_cpu_comes_last():
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers(["cuda", "tensorrt"], available, warn=pytest.fail)[0] == [
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "CPUExecutionProvider",
    ]
    warnings: list[str] = []
    chosen, dropped = onnx_providers(["gpu-typo"], available, warn=warnings.append)
    assert chosen == ["CPUExecutionProvider"] and dropped == {"gpu-typo": "unknown provider name"}
    assert len(warnings) == 1


@pytest.mark.parametrize(
    "requested, reason",
    [
        (["gpu"], "libtensorflowlite_gpu_delegate.so"),
        (["edgetpu", "cpu"], "libedgetpu.so.1"),
        (["/nonexistent/libdelegate.so"], "/nonexistent/libdelegate.so"),
        (["cuda"], "an ONNX Runtime provider"),
    ],
)
def test_litert_delegate_missing_falls_back_to_xnnpack_with_one_warning(exported, requested, reason, capfd):
    warnings: list[str] = []
    backbone = load_backbone(exported["int8.tflite"], threads=1, providers=requested, warn=warnings.append)
    assert backbone.execution.active == ["cpu"] and reason in backbone.execution.dropped[requested[0]]
    assert len(warnings) == 1 and "running on cpu (XNNPACK)" in warnings[0]
    assert "Traceback" not in capfd.readouterr().err  # LiteRT's own Delegate would print one
    assert _classify(backbone) == "orange"


def test_parse_providers():
    assert parse_providers(None) is None and parse_providers("") is None
    assert parse_providers("CUDA, ./libfoo.so") == ["cuda", "./libfoo.so"]


@pytest.mark.skipif(not VTEST.is_file(), reason="needs Debian's opencv-doc")
def test_run_records_the_providers_and_warns_once(exported, tmp_path):
    summary = tmp_path / "run.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime.cli",
            "run",
            "--source",
            str(VTEST),
            "--model",
            str(exported["int8.onnx"]),
            "--adapter",
            "none",
            "--max-frames",
            "5",
            "--quiet",
            "--providers",
            "tensorrt,cuda,cpu",
            "--json",
            str(summary),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    execution = json.loads(summary.read_text())["execution"]
    assert execution["requested"] == ["tensorrt", "cuda", "cpu"] and execution["active"] == ["CPUExecutionProvider"]
    assert sum("warning: execution provider" in line for line in done.stderr.splitlines()) == 1
    assert "backbone on CPUExecutionProvider (onnxruntime)" in done.stdout
    assert np.isfinite(json.loads(summary.read_text())["fps"])
