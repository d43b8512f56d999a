"""The C99 read-out, compiled with the system C compiler, against the Python adapters on real features."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.adapters.dmn import DMN
from edge_runtime.adapters.memflow import MemFlow
from edge_runtime.adapters.ncm import NCM
from edge_runtime.kernels.prng import make_graph
from edge_runtime.state import write_state
from firmware_bridge.export_c import CExport, export_c

CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler on PATH")
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def compile_readout(folder: Path) -> Path:
    """Build the exported folder's example main.c; returns the executable."""
    exe = folder / "classify"
    subprocess.run(
        [CC, *CFLAGS, f"-I{folder}", str(folder / "main.c"), str(folder / "edgert_readout.c"), "-lm", "-o", str(exe)],
        check=True,
        capture_output=True,
    )
    return exe


def run_readout(exe: Path, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probability of the label) printed by the C example for float32 rows sent raw on stdin."""
    done = subprocess.run(
        [str(exe), "-b"], input=np.ascontiguousarray(features, "<f4").tobytes(), check=True, capture_output=True
    )
    rows = [line.split() for line in done.stdout.decode().splitlines()]
    assert len(rows) == len(features)
    return np.array([int(r[0]) for r in rows]), np.array([float(r[-1]) for r in rows])


def check_agreement(
    model, domains, probes: np.ndarray, folder: Path, dtype: str, min_agreement: float, atol: float
) -> CExport:
    """Export ``model``, run the compiled example on ``probes`` and hold it to Python's predictions
    (and, for float32, to its confidences within ``atol``)."""
    result = export_c(model, folder, classes=domains["photo"].classes, dtype=dtype)
    labels, confidence = run_readout(compile_readout(folder), probes)
    expected = model.predict_proba(probes)
    agreement = float((labels == expected.argmax(axis=1)).mean())
    assert agreement >= min_agreement, f"{model.name} {dtype}: C agrees with Python on {agreement:.4f} of {len(probes)}"
    if dtype == "float32":
        np.testing.assert_allclose(confidence, expected.max(axis=1), atol=atol)
    return result


@pytest.fixture(scope="module")
def domains() -> dict[str, object]:
    from edge_runtime.bench.features import load_features

    return {name: load_features(name) for name in ("photo", "clipart", "emoji")}


@pytest.fixture(scope="module")
def ncm(domains) -> NCM:
    photo = domains["photo"]
    return NCM().fit(photo.X, photo.y, n_classes=len(photo.classes))


@pytest.fixture(scope="module")
def probes(domains) -> np.ndarray:
    # Shifted domains: predictions there are less confident, so near-ties test the agreement.
    return np.concatenate([domains["clipart"].X, domains["emoji"].X, domains["photo"].X[::3]])


@pytest.mark.parametrize("dtype, min_agreement", [("float32", 1.0), ("float16", 0.99), ("int8", 0.99)])
def test_prototype_readout_agrees_with_python(ncm, domains, probes, dtype, min_agreement, tmp_path) -> None:
    result = check_agreement(ncm, domains, probes, tmp_path, dtype, min_agreement, atol=2e-5)
    expected_bytes = {"float32": 4, "float16": 2, "int8": 1}[dtype] * ncm.n_classes * ncm.dim
    assert result.data_bytes == expected_bytes + (4 * ncm.n_classes if dtype == "int8" else 0)


def test_corrupted_header_is_refused_by_its_crc(ncm, domains, tmp_path) -> None:
    export_c(ncm, tmp_path, classes=domains["photo"].classes, dtype="int8")
    header = tmp_path / "edgert_memory.h"
    text = header.read_text()
    start = text.index("edgert_prototypes_q[")
    first_value = text.index("\n", start) + 5  # first number of the array's first line
    end = text.index(",", first_value)
    value = int(text[first_value:end])
    header.write_text(text[:first_value] + str(value + 1 if value < 127 else value - 1) + text[end:])
    done = subprocess.run([str(compile_readout(tmp_path))], input=b"", capture_output=True)
    assert done.returncode == 1 and b"fails its check (status -2)" in done.stderr


def test_export_c_command_reads_a_state_file(ncm, domains, tmp_path) -> None:
    from edge_runtime.cli import main

    state = write_state(
        tmp_path / "memory.npz", ncm, kind="memory", model_sha256="ef" * 32, classes=list(domains["photo"].classes)
    )
    assert main(["bridge", "export-c", "--state", str(state), "--out", str(tmp_path / "c"), "--dtype", "float32"]) == 0
    header = (tmp_path / "c" / "edgert_memory.h").read_text()
    assert '#define EDGERT_MODEL_SHA256 "' + "ef" * 32 + '"' in header
    assert f"#define EDGERT_N_CLASSES {ncm.n_classes}" in header
    labels, _ = run_readout(compile_readout(tmp_path / "c"), domains["emoji"].X[:50])
    np.testing.assert_array_equal(labels, ncm.predict(domains["emoji"].X[:50]))


def test_text_input_and_invalid_rows(ncm, domains, tmp_path) -> None:
    export_c(ncm, tmp_path, classes=domains["photo"].classes, dtype="float32")
    x = domains["clipart"].X[:3].copy()
    x[1] = 0.0  # an all-zero vector cannot be normalised
    text = "\n".join(" ".join(format(float(v), ".9g") for v in row) for row in x)
    done = subprocess.run([str(compile_readout(tmp_path))], input=text.encode(), check=True, capture_output=True)
    lines = done.stdout.decode().splitlines()
    assert lines[1].startswith("-1 invalid-input")
    assert [int(lines[i].split()[0]) for i in (0, 2)] == ncm.predict(x[[0, 2]]).tolist()
    label, *name, _ = lines[0].split()
    assert " ".join(name) == domains["photo"].classes[int(label)]


# -- MemFlow -------------------------------------------------------------------------------------------
GRAPH_DUMP_C = r"""
#include <stdio.h>
#include "edgert_readout.h"
#include "edgert_memory.h"
static float entry_hub[EDGERT_N_HUB * EDGERT_DIM];
static float hub_hub[EDGERT_N_HUB * EDGERT_N_HUB];
static int32_t bridge_src[EDGERT_N_BRIDGE * EDGERT_IN_DEGREE];
static float bridge_w[EDGERT_N_BRIDGE * EDGERT_IN_DEGREE];
int main(void)
{
    if (EDGERT_MEMORY_CHECK() != EDGERT_OK || edgert_memflow_graph(&edgert_memory, &edgert_work, entry_hub, hub_hub,
                                                                   bridge_src, bridge_w) != EDGERT_OK)
        return 1;
    fwrite(entry_hub, sizeof entry_hub, 1, stdout);
    fwrite(hub_hub, sizeof hub_hub, 1, stdout);
    fwrite(bridge_src, sizeof bridge_src, 1, stdout);
    fwrite(bridge_w, sizeof bridge_w, 1, stdout);
    return 0;
}
"""


@pytest.mark.parametrize(
    "seed, sizes",
    [(0, dict(n_hub=64, n_bridge=512, in_degree=30)), (2**63 + 12345, dict(n_hub=5, n_bridge=40, in_degree=50))],
)
def test_c_prng_regenerates_pythons_graph_bit_for_bit(seed, sizes, tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(40, 96))).astype(np.float32)
    memflow = MemFlow(seed=seed, **sizes).fit(x, np.arange(40) % 4)
    export_c(memflow, tmp_path, classes=list("abcd"), dtype="int8")
    (tmp_path / "dump.c").write_text(GRAPH_DUMP_C)
    exe = tmp_path / "dump"
    subprocess.run(
        [
            CC,
            *CFLAGS,
            f"-I{tmp_path}",
            str(tmp_path / "dump.c"),
            str(tmp_path / "edgert_readout.c"),
            "-lm",
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
    )
    raw = subprocess.run([str(exe)], check=True, capture_output=True).stdout
    w_eh, w_hh, src, w_b = make_graph(seed, 96, sizes["n_hub"], sizes["n_bridge"], sizes["in_degree"])
    offsets = np.cumsum([0, w_eh.nbytes, w_hh.nbytes, src.nbytes, w_b.nbytes])
    assert len(raw) == offsets[-1]
    for array, start, end in zip((w_eh, w_hh, src, w_b), offsets[:-1], offsets[1:]):
        c_array = np.frombuffer(raw[start:end], dtype=array.dtype.newbyteorder("<")).reshape(array.shape)
        # Bit-exact: compare the bytes, not the values within a tolerance.
        assert c_array.tobytes() == array.astype(array.dtype.newbyteorder("<")).tobytes()


@pytest.fixture(scope="module")
def memflow(domains, one_blas_thread) -> MemFlow:
    """The default network fitted on photo, then adapted on a clipart stream (so the shift and the
    target memory hold real state)."""
    photo = domains["photo"]
    model = MemFlow().fit(photo.X, photo.y, n_classes=len(photo.classes))
    model.adapt(domains["clipart"].X[::2])
    return model


@pytest.mark.parametrize("dtype, min_agreement", [("float32", 1.0), ("int8", 0.99)])
def test_memflow_readout_agrees_with_python(memflow, domains, probes, dtype, min_agreement, tmp_path) -> None:
    result = check_agreement(memflow, domains, probes, tmp_path, dtype, min_agreement, atol=1e-3)
    assert result.kind == "memflow"


@pytest.mark.parametrize(
    "params, adapt",
    [
        (dict(shift_prior=0.0), False),
        (dict(shift_fade=False, shift_decay=0.99, prior_unit=False, memory_weight=2.0), True),
    ],
    ids=["no-shift-weight", "anchored-shift-raw-norm-head"],
)
def test_memflow_readout_options_agree_with_python(domains, probes, params, adapt, tmp_path, one_blas_thread) -> None:
    # No source pseudo-frame and no frame yet: nothing to shift by (the source centre, no trace
    # shift); then the anchored shift stage and a head reading the feature at its raw norm.
    photo = domains["photo"]
    model = MemFlow(**params).fit(photo.X, photo.y, n_classes=len(photo.classes))
    if adapt:
        model.adapt(domains["clipart"].X[::2])
    result = check_agreement(model, domains, probes, tmp_path, "float32", 1.0, atol=1e-3)
    assert ("edgert_trace_delta[" in result.header.read_text()) == adapt


def test_memflow_header_fits_the_budget(memflow, domains, tmp_path) -> None:
    # 9 classes, default network: the memory is a seed, not weights, so it stays small.
    default = MemFlow()
    assert memflow.n_classes == 9 and (memflow.n_hub, memflow.n_bridge) == (default.n_hub, default.n_bridge)
    # The default export (int8 matrices with per-row scales); float32 sizes are printed by
    # `edgert bench bridge`.
    result = export_c(memflow, tmp_path, classes=domains["photo"].classes)
    assert result.dtype == "int8" and result.data_bytes <= 64 * 1024
    assert f"#define EDGERT_MEMORY_SEED {memflow.seed}ull" in result.header.read_text()


# -- DMN -----------------------------------------------------------------------------------------------
def adapted_dmn(domains, **params) -> DMN:
    """DMN fitted on photo and adapted on half the clipart stream: its rings hold real test features
    and its shift stage has moved off the source mean."""
    photo = domains["photo"]
    model = DMN(**params).fit(photo.X, photo.y, n_classes=len(photo.classes))
    model.adapt(domains["clipart"].X[::2])
    return model


@pytest.fixture(scope="module")
def dmn(domains, one_blas_thread) -> DMN:
    return adapted_dmn(domains)


@pytest.fixture(scope="module")
def dmn_variants(dmn, domains, tmp_path_factory, one_blas_thread) -> dict[str, DMN]:
    # The other priors; "text" reads the clipart class means as if they were class text embeddings.
    clipart = domains["clipart"]
    means = np.stack([clipart.X[clipart.y == c].mean(axis=0) for c in range(len(clipart.classes))])
    text = tmp_path_factory.mktemp("text") / "text.npy"
    np.save(text, means.astype(np.float32))
    return {
        "linear": dmn,
        "prototypes": adapted_dmn(domains, prior="prototypes", weight_static=0.3, anchors="source-means"),
        "text": adapted_dmn(domains, prior="text", text_embeddings=str(text), weight_static=0.3),
    }


def test_adapted_dmn_fixture_exercises_the_memories(dmn, probes) -> None:
    # Otherwise agreement below would not show that the C read-out reads the ring and the shift.
    assert dmn.memory_fill.sum() > 0 and (dmn.memory_fill == 0).any()  # filled rings and an anchor
    shift = dmn._stage.arrays()
    assert not np.array_equal(shift["source_mean"], shift["target_mean"])
    assert (dmn.predict(probes) != dmn.prior_proba(probes).argmax(axis=1)).any()


@pytest.mark.parametrize(
    "prior, dtype, min_agreement",
    [
        ("linear", "float32", 1.0),
        ("linear", "float16", 0.99),
        ("linear", "int8", 0.99),
        ("prototypes", "float32", 1.0),
        ("prototypes", "int8", 0.99),
        ("text", "float32", 1.0),
    ],
)
def test_dmn_readout_agrees_with_python(dmn_variants, domains, probes, prior, dtype, min_agreement, tmp_path) -> None:
    model = dmn_variants[prior]
    # The prototype and text priors are softmax(100 cos): float32 rounding of a cosine moves a logit 100x more.
    result = check_agreement(model, domains, probes, tmp_path, dtype, min_agreement, atol=1e-4)
    assert result.kind == "dmn"
    # Only occupied slots are stored: nothing is written on the target, so empty ones are never read.
    text = result.header.read_text()
    suffix = {"int8": "q", "float16": "f16", "float32": "f32"}[dtype]
    assert f"edgert_dynamic_{suffix}[{model.memory_fill.sum()} * EDGERT_DIM]" in text
    assert ("edgert_static_" in text) == (model.weight_static != 0)


@pytest.mark.parametrize(
    "params, adapt",
    [(dict(shift_momentum=None), True), ({}, False), (dict(weight_dynamic=0.0, weight_static=0.5), True)],
    ids=["no-shift-stage", "empty-rings", "static-only"],
)
def test_dmn_readout_without_parts_agrees_with_python(domains, probes, params, adapt, tmp_path) -> None:
    # Each leaves a part out of the header (shift, every ring slot, the dynamic memory).
    photo = domains["photo"]
    model = DMN(prior="prototypes", **params).fit(photo.X, photo.y, n_classes=len(photo.classes))
    if adapt:
        model.adapt(domains["clipart"].X[::2])
    check_agreement(model, domains, probes, tmp_path, "float32", 1.0, atol=1e-4)


def test_export_c_command_reads_a_dmn_state_file(dmn, domains, tmp_path) -> None:
    from edge_runtime.cli import main

    state = write_state(
        tmp_path / "memory.npz", dmn, kind="memory", model_sha256="ab" * 32, classes=list(domains["photo"].classes)
    )
    assert main(["bridge", "export-c", "--state", str(state), "--out", str(tmp_path / "c"), "--dtype", "float32"]) == 0
    assert '#define EDGERT_MEMORY_KIND "dmn"' in (tmp_path / "c" / "edgert_memory.h").read_text()
    labels, _ = run_readout(compile_readout(tmp_path / "c"), domains["emoji"].X)
    np.testing.assert_array_equal(labels, dmn.predict(domains["emoji"].X))
