"""The demo's source memory: reused only when this runtime's defaults built it."""

from __future__ import annotations

from edge_runtime.bench.datasets import labelled_images
from edge_runtime.bench.demo import source_memory
from edge_runtime.cli import main as edgert
from edge_runtime.runtime.source_memory import build
from edge_runtime.state import read_state


def test_demo_rebuilds_a_source_memory_made_with_other_parameters(exported, tmp_path, capsys) -> None:
    # An older runtime's memory still loads (without the temporal filter) but would not show what
    # this runtime does; the demo must notice and build it again, then reuse the new one.
    model = exported["int8.tflite"]
    path = tmp_path / "source-photo-memflow.npz"
    build(model, "photo", "memflow", path, params={"temporal": False}, domains=labelled_images)
    assert source_memory(model, "memflow", tmp_path) == path
    assert "other parameters" in capsys.readouterr().out
    assert read_state(path).adapter.temporal is True
    source_memory(model, "memflow", tmp_path)
    assert "already built" in capsys.readouterr().out


def test_edgert_memory_build_knows_the_packaged_domains(exported, tmp_path) -> None:
    # The host's `edgert memory build --images photo` is what the arm run and README give; the
    # device command alone takes only folders, so the host command must be the one dispatched.
    out = tmp_path / "photo.npz"
    code = edgert(["memory", "build", "--model", str(exported["int8.tflite"]), "--images", "photo", "--out", str(out)])
    assert code == 0
    classes = read_state(out).classes
    assert classes == labelled_images("photo")[2]
