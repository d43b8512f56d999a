"""Export an adapter's memory as a C header for the C99 read-out in ``firmware_bridge/c/``.

The header (``edgert_memory.h``) holds the memory as ``const`` arrays, aligned like TFLite Micro's
model arrays, with its format version, sizes, seed, class names, the model's sha256 and a CRC-32
over the arrays' bytes; ``EDGERT_MEMORY_CHECK()`` verifies it on the target and
``EDGERT_CLASSIFY(features, probs)`` classifies. The read-out sources and an example ``main.c``
are copied beside it, so the folder builds on its own::

    cc -std=c99 -O2 -I DIR DIR/main.c DIR/edgert_readout.c -lm

Adapters with a C read-out (``EXPORTERS``): ``ncm`` (a prototype matrix, cosine scores),
``memflow`` (seed, sizes and per-neuron Gaussians; the network is regenerated on the target) and
``dmn`` (the feature shift, the prior with any of its three kinds, the occupied slots of the dynamic
and, when weighted, the static memory, and the anchors of empty classes). The read-outs classify and
do not adapt: adapt on the Linux side, then export again. An option a C read-out does not
implement is refused (``MEMFLOW_PARAMS``, ``DMN_PARAMS``) rather than exported wrong.

Matrices are stored as int8 with one scale per row (value = scale * q, scale = max|row| / 127),
or as float16 / float32. Compatibility policy: a read-out accepts exactly the format version it
was written for (``EDGERT_FORMAT_VERSION``; the generated header refuses to compile otherwise).

>>> q, scales = quantize_rows(np.array([[0.5, -1.0], [0.0, 0.0]], dtype=np.float32))
>>> q.tolist(), scales.tolist()
([[64, -127], [0, 0]], [0.007874015718698502, 1.0])
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edge_runtime.errors import InputError
from firmware_bridge.crc import crc32

EXPORT_FORMAT = 3  # EDGERT_FORMAT_VERSION in c/edgert_readout.h
DTYPES = ("int8", "float16", "float32")
C_SOURCES = ("edgert_readout.h", "edgert_readout.c", "main.c")
C_DIR = Path(__file__).resolve().parent / "c"
HEADER_NAME = "edgert_memory.h"
_C_TYPES = {
    "int8": "int8_t",
    "float16": "uint16_t",
    "float32": "float",
    "uint16": "uint16_t",
    "int32": "int32_t",
    "uint32": "uint32_t",
}
_DTYPE_ENUM = {"int8": "EDGERT_INT8", "float16": "EDGERT_FLOAT16", "float32": "EDGERT_FLOAT32"}
_NO_MATRIX = "{EDGERT_FLOAT32, NULL, NULL}"  # an edgert_matrix a read-out does not read


@dataclass(frozen=True)
class CExport:
    """What ``export_c`` wrote: the header, the copied sources, and the sizes a firmware budget needs."""

    header: Path
    files: tuple[Path, ...]
    kind: str
    dtype: str
    data_bytes: int  # bytes of const arrays (what the memory costs in flash)
    header_bytes: int  # size of the header file's text
    crc32: int


def quantize_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: q = round(x / s), s = max|row| / 127 (1.0 for an all-zero row)."""
    x = np.asarray(matrix, dtype=np.float32)
    peak = np.abs(x).max(axis=1)
    scales = np.where(peak > 0, peak / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(x / scales[:, None]), -127, 127).astype(np.int8)
    return q, scales


class _Header:
    """Accumulates the generated header's arrays (in CRC order) and text."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.blocks: list[tuple[str, np.ndarray]] = []

    def array(self, name: str, values: np.ndarray, ctype: str, size_expr: str) -> str:
        values = np.ascontiguousarray(values).reshape(-1)
        self.blocks.append((name, values))
        per_line = 8 if values.dtype.kind == "f" else 20
        body = ",\n".join(
            "    " + ",".join(_c_literal(v, values.dtype) for v in values[i : i + per_line])
            for i in range(0, len(values), per_line)
        )
        self.lines.append(f"EDGERT_ALIGNED(16) static const {ctype} {name}[{size_expr}] = {{\n{body}\n}};\n")
        return name

    def matrix(self, prefix: str, matrix: np.ndarray, dtype: str, rows_expr: str, cols_expr: str) -> str:
        """Emit a matrix in ``dtype``; returns the C initializer of its ``edgert_matrix``."""
        size = f"{rows_expr} * {cols_expr}"
        if dtype == "int8":
            q, scales = quantize_rows(matrix)
            data = self.array(f"{prefix}_q", q, "int8_t", size)
            scale = self.array(f"{prefix}_scale", scales, "float", rows_expr)
            return f"{{EDGERT_INT8, {data}, {scale}}}"
        if dtype == "float16":
            if np.abs(matrix).max(initial=0.0) > np.finfo(np.float16).max:
                raise InputError(f"{prefix} holds values beyond float16's range: export with --dtype float32 or int8")
            bits = np.asarray(matrix, dtype="<f2").view("<u2")
            return f"{{EDGERT_FLOAT16, {self.array(f'{prefix}_f16', bits, 'uint16_t', size)}, NULL}}"
        data = self.array(f"{prefix}_f32", np.asarray(matrix, dtype="<f4"), "float", size)
        return f"{{EDGERT_FLOAT32, {data}, NULL}}"

    def crc(self) -> int:
        value = 0
        for _, values in self.blocks:
            value = crc32(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes(), value)
        return value

    def data_bytes(self) -> int:
        return sum(values.nbytes for _, values in self.blocks)

    def descriptor(self, ctype: str, fields: str) -> None:
        """Close the arrays: their CRC and block table, then the ``edgert_memory`` descriptor of type
        ``ctype``, whose ``fields`` sit between the common head (format, classes, dim) and tail (CRC)."""
        names = ", ".join(name for name, _ in self.blocks)
        sizes = ", ".join(f"sizeof {name}" for name, _ in self.blocks)
        self.lines += [
            f"#define EDGERT_MEMORY_CRC32 0x{self.crc():08x}u\n#define EDGERT_MEMORY_BYTES {self.data_bytes()}\n",
            f"static const void *const edgert_memory_blocks[] = {{{names}}};\n"
            f"static const uint32_t edgert_memory_block_sizes[] = {{{sizes}}};\n",
            f"static const {ctype} edgert_memory = {{\n    EDGERT_MEMORY_FORMAT, EDGERT_N_CLASSES, EDGERT_DIM,\n{fields}"
            "    EDGERT_MEMORY_CRC32, edgert_memory_blocks, edgert_memory_block_sizes,\n"
            "    (uint32_t)(sizeof edgert_memory_block_sizes / sizeof edgert_memory_block_sizes[0])\n};\n",
        ]

    def work(self, ctype: str, buffers: dict[str, tuple[str, str]], tail: str = "") -> None:
        """Static work buffers (name -> (C type, size), in the order of ``ctype``'s fields) and the
        ``edgert_work`` struct pointing at them: the RAM a read-out needs, without malloc."""
        arrays = "".join(f"static {c} edgert_work_{name}[{size}];\n" for name, (c, size) in buffers.items())
        fields = ", ".join([f"edgert_work_{name}" for name in buffers] + ([tail] if tail else []))
        self.lines += [
            "/* Work buffers: RAM the read-out needs (no malloc). */\n" + arrays,
            f"static {ctype} edgert_work = {{\n    {fields}\n}};\n",
        ]


def _c_literal(value: Any, dtype: np.dtype) -> str:
    if dtype.kind != "f":
        return str(int(value))
    if not np.isfinite(value):
        raise InputError(f"memory holds a non-finite value ({value}): it cannot be exported")
    # The shortest decimal that reads back as the same float32 (C rounds literals to nearest).
    v = np.float32(value)
    text = min(
        np.format_float_positional(v, unique=True, trim="0"),
        np.format_float_scientific(v, unique=True, trim="0"),
        key=len,
    )
    return text + "f"


def _float(value: float) -> str:
    """A C float literal of ``value`` rounded to float32, as the Python kernels use it."""
    return _c_literal(np.float32(value), np.dtype("f4"))


def _refuse_unknown(adapter: Any, known: frozenset[str], table: str) -> None:
    unknown = sorted(set(adapter.get_params()) - known)
    if unknown:
        raise InputError(
            f"{adapter.name} option(s) {', '.join(unknown)} have no C read-out yet: update "
            f"firmware_bridge/c/edgert_readout.c and export_c.{table}"
        )


def _c_comment(text: str) -> str:
    """``text`` safe inside a C block comment: printable ASCII only, no comment terminator."""
    safe = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return safe.replace("*/", "*?").replace("/*", "?*")


def _sha256_hex(value: str) -> str:
    """A model sha256 as it may appear in C: 64 hex digits (or empty); anything else is refused."""
    import re

    if value and not re.fullmatch(r"[0-9a-f]{64}", value):
        raise InputError(
            f"model_sha256 {value[:80]!r} is not 64 lowercase hex digits: the state file is damaged "
            f"or crafted, and it is not written into C"
        )
    return value


def _c_string(text: str) -> str:
    """A C string literal of ``text`` (UTF-8), every byte outside printable ASCII, and ``"``, ``\\``
    and ``?`` (trigraphs), as a three-digit octal escape."""
    out = []
    for byte in str(text).encode("utf-8", "replace"):
        ch = chr(byte)
        out.append(ch if 32 <= byte < 127 and ch not in '"\\?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


# -- what each adapter's memory is, for the read-out ------------------------------------------------------
def _ncm_prototypes(adapter: Any) -> tuple[np.ndarray, float]:
    table = adapter.c_export()
    return table["prototypes"], table["inv_temperature"]


# adapter registry name -> (prototypes (classes, dim) with unit or zero rows, 1 / softmax temperature)
PROTOTYPE_READERS: dict[str, Callable[[Any], tuple[np.ndarray, float]]] = {"ncm": _ncm_prototypes}


def _preamble(
    kind: str, dtype: str, n_classes: int, dim: int, seed: int, classes: Sequence[str], model_sha256: str, source: str
) -> list[str]:
    names = ", ".join(_c_string(c) for c in classes)
    return [
        f"/* Generated by `edgert bridge export-c` from {_c_comment(source) or 'an adapter'}: do not edit.\n"
        f" * Memory kind {kind}, stored as {dtype}. Include in exactly one .c file.\n"
        f" * Build: cc -std=c99 -O2 -I. main.c edgert_readout.c -lm */\n",
        '#ifndef EDGERT_MEMORY_H\n#define EDGERT_MEMORY_H\n\n#include <stdint.h>\n#include "edgert_readout.h"\n',
        f"#if EDGERT_FORMAT_VERSION != {EXPORT_FORMAT}\n"
        f'#error "edgert_memory.h is format {EXPORT_FORMAT}: use the read-out exported with it"\n#endif\n',
        f'#define EDGERT_MEMORY_FORMAT {EXPORT_FORMAT}\n#define EDGERT_MEMORY_KIND "{kind}"\n'
        f"#define EDGERT_MEMORY_DTYPE {_DTYPE_ENUM[dtype]}\n#define EDGERT_MEMORY_SEED {seed}ull\n"
        f"#define EDGERT_N_CLASSES {n_classes}\n#define EDGERT_DIM {dim}\n"
        f'#define EDGERT_MODEL_SHA256 "{_sha256_hex(model_sha256)}"\n',
        f"static const char *const edgert_class_names[EDGERT_N_CLASSES] = {{{names}}};\n",
    ]


def _prototype_header(adapter: Any, dtype: str, preamble: list[str]) -> _Header:
    prototypes, inv_temperature = PROTOTYPE_READERS[adapter.name](adapter)
    header = _Header()
    header.lines += preamble
    matrix = header.matrix("edgert_prototypes", prototypes, dtype, "EDGERT_N_CLASSES", "EDGERT_DIM")
    header.descriptor("edgert_prototypes", f"    {_float(inv_temperature)}, {matrix},\n")
    header.lines.append(
        "#define EDGERT_MEMORY_CHECK() edgert_prototypes_check(&edgert_memory)\n"
        "#define EDGERT_CLASSIFY(features, probs) edgert_prototypes_classify(&edgert_memory, (features), (probs))\n"
    )
    return header


# MemFlow parameters the C read-out implements (read-only: the reinforcement and running-statistics
# ones do not apply, and the temporal filter is a stream stage: the read-out classifies each frame
# on its own, as ``predict_proba`` does).
MEMFLOW_PARAMS = frozenset(
    {
        "n_hub",
        "n_bridge",
        "in_degree",
        "rounds",
        "seed",
        "spiking",
        "blur",
        "confidence_update",
        "reinforce",
        "readout",
        "confidence",
        "variance",
        "var_floor",
        "temperature",
        "source_weight",
        "decay",
        "gate",
        "shift",
        "shift_prior",
        "shift_decay",
        "shift_fade",
        "shift_spread",
        "shift_rank",
        "shift_every",
        "shift_novelty",
        "shift_ring",
        "standardise",
        "prior",
        "memory_weight",
        "prior_l2",
        "prior_unit",
        "temporal",
        "temporal_lag",
        "temporal_max",
        # the class-balanced slots only decide the input stage and trace shift, exported as they stand
        "balanced",
        "slot_prior",
        "slot_decay",
        "slot_gate",
        "slot_novelty",
        "slot_ring",
        "slot_soft",
        "slot_floor",
        "slot_cov_prior",
        "slot_reference",
        "slot_leak",
    }
)


def _memflow_header(adapter: Any, dtype: str, preamble: list[str]) -> _Header:
    _refuse_unknown(adapter, MEMFLOW_PARAMS, "MEMFLOW_PARAMS")
    table = adapter.c_export()
    n, k = table["mu"].shape
    hiv, lnorm = np.asarray(table["hiv"], np.float32), np.asarray(table["lnorm"], np.float32)
    pooled = bool((hiv == hiv[:, :1]).all() and (lnorm == lnorm[:, :1]).all())
    var_cols = 1 if pooled else k
    # Neuron-major (N x K), as the adapter keeps them: an int8 scale per neuron fits neurons of
    # any trace scale.
    mu_t = np.ascontiguousarray(table["mu"], np.float32)
    hiv_t = np.ascontiguousarray(hiv[:, :1] if pooled else hiv)
    lnorm_t = np.ascontiguousarray(lnorm[:, :1] if pooled else lnorm)
    header = _Header()
    header.lines += preamble
    header.lines.append(
        f"#define EDGERT_N_HUB {adapter.n_hub}\n#define EDGERT_N_BRIDGE {adapter.n_bridge}\n"
        f"#define EDGERT_IN_DEGREE {adapter.in_degree}\n#define EDGERT_ROUNDS {adapter.rounds}\n"
        f"#define EDGERT_N_NEURONS {n}\n#define EDGERT_VAR_COLS {var_cols}\n"
    )
    # The input stage as it stands (the EMAs are frozen into the export): the C read-out computes
    # z = (x / ||x|| - centre) * scale and its head reads z / scale + centre_source, as the kernel.
    stage = table["stage"]
    centre = header.array("edgert_centre", stage.centre, "float", "EDGERT_DIM")
    scale = "NULL" if (stage.factor == 1.0).all() else header.array("edgert_scale", stage.factor, "float", "EDGERT_DIM")
    rank = stage.basis.shape[0] if stage.mix.any() else 0  # an identity map is left out
    header.lines.append(f"#define EDGERT_RANK {rank}\n")
    if rank:
        basis = header.matrix("edgert_basis", stage.basis, dtype, "EDGERT_RANK", "EDGERT_DIM")
        mix = header.array("edgert_mix", stage.mix, "float", "EDGERT_RANK * EDGERT_RANK")
    else:
        basis, mix = _NO_MATRIX, "NULL"
    delta_values = table["trace_shift"]
    delta = (
        "NULL"
        if not delta_values.any()
        else header.array("edgert_trace_delta", delta_values, "float", "EDGERT_N_NEURONS")
    )
    mu = header.matrix("edgert_mu", mu_t, dtype, "EDGERT_N_NEURONS", "EDGERT_N_CLASSES")
    # One value per row (pooled variance) costs more as int8 + scale than as float32; 1 / (2 V) of
    # a neuron with a tiny variance exceeds float16's 65504: those stay float32.
    var_dtype = "float32" if pooled or dtype == "float16" else dtype
    hiv_m = header.matrix("edgert_hiv", hiv_t, var_dtype, "EDGERT_N_NEURONS", "EDGERT_VAR_COLS")
    lnorm_m = header.matrix("edgert_lnorm", lnorm_t, var_dtype, "EDGERT_N_NEURONS", "EDGERT_VAR_COLS")
    present = header.array("edgert_present", np.asarray(table["present"], np.uint8), "uint8_t", "EDGERT_N_CLASSES")
    alive = header.array(
        "edgert_alive", (np.asarray(table["alive"]) > 0).astype(np.uint8), "uint8_t", "EDGERT_N_NEURONS"
    )
    if adapter.prior:
        prior_w = header.matrix(
            "edgert_prior_w", np.asarray(table["prior_w"], np.float32), dtype, "EDGERT_N_CLASSES", "EDGERT_DIM"
        )
        prior_b = header.array("edgert_prior_b", np.asarray(table["prior_b"], np.float32), "float", "EDGERT_N_CLASSES")
        centre_source = header.array(
            "edgert_centre_source", np.asarray(table["centre_source"], np.float32), "float", "EDGERT_DIM"
        )
        head_scale, memory_weight = table["head_scale"], table["memory_weight"]
        prior = (
            f"1, {prior_w}, {prior_b}, {centre_source}, {head_scale!r}, {memory_weight!r}, {int(adapter.prior_unit)}"
        )
    else:
        prior = f"0, {_NO_MATRIX}, NULL, NULL, 1.0, 1.0, 0"
    tau = repr(table["tau"])
    header.descriptor(
        "edgert_memflow",
        "    EDGERT_N_HUB, EDGERT_N_BRIDGE, EDGERT_IN_DEGREE, EDGERT_ROUNDS, EDGERT_MEMORY_SEED,\n"
        f"    {int(adapter.spiking)}, {int(adapter.readout == 'product')}, {int(adapter.confidence)}, {tau},\n"
        f"    {centre}, EDGERT_RANK, {basis}, {mix}, {scale}, {delta}, {mu}, {hiv_m}, {lnorm_m},\n"
        f"    EDGERT_VAR_COLS, {present}, {alive},\n"
        f"    {prior},\n",
    )
    neurons = ("float", "EDGERT_N_NEURONS")
    header.work(
        "edgert_memflow_work",
        {
            "z": ("float", "EDGERT_DIM"),
            "y": ("float", str(max(rank, 1))),
            "t": ("float", str(max(rank, 1))),
            "a": neurons,
            "h": neurons,
            "o": neurons,
            "o_prev": neurons,
            "m": neurons,
            "c": neurons,
            "best": neurons,
            "ll": ("float", "EDGERT_N_CLASSES * EDGERT_N_NEURONS"),
            "bridge_state": ("uint64_t", str(max(adapter.n_bridge, 1))),
            "slot_src": ("int32_t", str(max(adapter.in_degree, 1))),
            "slot_w": ("float", str(max(adapter.in_degree, 1))),
            "out": ("float", "EDGERT_N_CLASSES"),
            "logits": ("float", "EDGERT_N_CLASSES"),
        },
        tail="0",
    )
    header.lines.append(
        "#define EDGERT_MEMORY_CHECK() edgert_memflow_init(&edgert_memory, &edgert_work)\n"
        "#define EDGERT_CLASSIFY(features, probs) "
        "edgert_memflow_classify(&edgert_memory, &edgert_work, (features), (probs))\n"
    )
    return header


# DMN parameters the C read-out implements. It only reads, so the ones that govern writing
# (memory_length, static_length, write_gate, skip_own_slot, seed) shaped the exported state and nothing more.
DMN_PARAMS = frozenset(
    {
        "prior",
        "text_embeddings",
        "memory_length",
        "static_length",
        "beta",
        "scale",
        "prior_scale",
        "weight_dynamic",
        "weight_static",
        "write_gate",
        "anchors",
        "shift_momentum",
        "shift_balanced",  # decides the exported feature shift only
        "skip_own_slot",
        "seed",
    }
)


def dmn_prior(adapter: Any) -> tuple[np.ndarray, np.ndarray | None, float]:
    """A DMN's prior as (P, b or None, s), its probabilities softmax(s * P x + b) of the shifted feature x."""
    weights, bias, scale = adapter.c_export()["prior"]
    return weights, bias, scale


def _dmn_memory(header: _Header, prefix: str, slots: np.ndarray, fill: np.ndarray, weight: float, dtype: str) -> str:
    """Emit one memory's occupied slots class by class (the rest of a ring is never read: nothing is
    written on the target); returns its ``edgert_dmn_memory`` initializer."""
    if weight == 0.0:
        return f"{{{_NO_MATRIX}, NULL, 0.0f}}"
    fill = np.asarray(fill, np.int64)
    start = header.array(
        f"{prefix}_start", np.concatenate([[0], np.cumsum(fill)]).astype(np.uint32), "uint32_t", "EDGERT_N_CLASSES + 1"
    )
    rows = np.concatenate([slots[c, :n] for c, n in enumerate(fill)])
    # A C array cannot be empty: a memory without any slot reads its anchors only.
    matrix = header.matrix(prefix, rows, dtype, str(len(rows)), "EDGERT_DIM") if len(rows) else _NO_MATRIX
    return f"{{{matrix}, {start}, {_float(weight)}}}"


def _dmn_header(adapter: Any, dtype: str, preamble: list[str]) -> _Header:
    _refuse_unknown(adapter, DMN_PARAMS, "DMN_PARAMS")
    header = _Header()
    header.lines += preamble
    table = adapter.c_export()
    # FeatureShift.transform adds (source mean - target mean), differenced in float32: the same vector here.
    shift = "NULL" if table["shift"] is None else header.array("edgert_shift", table["shift"], "float", "EDGERT_DIM")
    weights, bias, prior_scale = dmn_prior(adapter)
    prior = header.matrix("edgert_prior", weights, dtype, "EDGERT_N_CLASSES", "EDGERT_DIM")
    prior_bias = "NULL" if bias is None else header.array("edgert_prior_bias", bias, "float", "EDGERT_N_CLASSES")
    memories = [
        ("edgert_dynamic", *table["dynamic"], float(adapter.weight_dynamic)),
        ("edgert_static", *table["static"], float(adapter.weight_static)),
    ]
    read = [_dmn_memory(header, prefix, slots, fill, weight, dtype) for prefix, slots, fill, weight in memories]
    # An empty class reads its anchor: stored only if some memory that is read has an empty class.
    empty = any(weight != 0.0 and (np.asarray(fill) == 0).any() for _, _, fill, weight in memories)
    anchors = (
        header.matrix("edgert_anchors", table["anchors"], dtype, "EDGERT_N_CLASSES", "EDGERT_DIM")
        if empty
        else _NO_MATRIX
    )
    header.descriptor(
        "edgert_dmn",
        f"    {shift}, {prior}, {prior_bias}, {_float(prior_scale)},\n"
        f"    {read[0]},\n    {read[1]},\n"
        f"    {anchors}, {_float(adapter.beta)}, {_float(adapter.scale)},\n",
    )
    dims = ("float", "EDGERT_DIM")
    header.work(
        "edgert_dmn_work",
        {"x": dims, "proto": dims, "logits": ("float", "EDGERT_N_CLASSES"), "out": ("float", "EDGERT_N_CLASSES")},
    )
    header.lines.append(
        "#define EDGERT_MEMORY_CHECK() edgert_dmn_check(&edgert_memory)\n"
        "#define EDGERT_CLASSIFY(features, probs) edgert_dmn_classify(&edgert_memory, &edgert_work, (features), (probs))\n"
    )
    return header


# memory kind -> writer of its header body (after the common preamble)
_WRITERS: dict[str, Callable[[Any, str, list[str]], _Header]] = {
    "prototypes": _prototype_header,
    "memflow": _memflow_header,
    "dmn": _dmn_header,
}
# adapter registry name -> the kind of memory its C read-out classifies with
EXPORTERS: dict[str, str] = {**{name: "prototypes" for name in PROTOTYPE_READERS}, "memflow": "memflow", "dmn": "dmn"}


def export_c(
    adapter: Any,
    out_dir: str | Path,
    *,
    classes: Sequence[str],
    dtype: str = "int8",
    model_sha256: str = "",
    source: str = "",
) -> CExport:
    """Write ``edgert_memory.h`` for ``adapter`` and copy the C read-out into ``out_dir``."""
    if dtype not in DTYPES:
        raise InputError(f"unknown C export dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if adapter.name not in EXPORTERS:
        known = ", ".join(sorted(EXPORTERS))
        raise InputError(f"adapter {adapter.name!r} has no C read-out; export one of: {known}")
    if len(classes) != adapter.n_classes:
        raise InputError(f"{len(classes)} class names for an adapter with {adapter.n_classes} classes")
    kind = EXPORTERS[adapter.name]
    seed = int(getattr(adapter, "seed", 0)) if kind == "memflow" else 0
    preamble = _preamble(kind, dtype, adapter.n_classes, adapter.dim, seed, classes, model_sha256, source)
    header = _WRITERS[kind](adapter, dtype, preamble)
    header.lines.append("\n#endif /* EDGERT_MEMORY_H */\n")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / HEADER_NAME
    text = "\n".join(header.lines)
    path.write_text(text)
    copied = tuple(Path(shutil.copyfile(C_DIR / name, out / name)) for name in C_SOURCES)
    return CExport(path, (path, *copied), kind, dtype, header.data_bytes(), len(text.encode()), header.crc())


__all__ = [
    "DMN_PARAMS",
    "dmn_prior",
    "MEMFLOW_PARAMS",
    "CExport",
    "DTYPES",
    "EXPORTERS",
    "EXPORT_FORMAT",
    "PROTOTYPE_READERS",
    "export_c",
    "quantize_rows",
]
