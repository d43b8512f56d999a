"""Reading the packaged PNG images: reduced decoding, alpha compositing, the tuxpaint photo list.

Some openclipart files are huge (up to 21000 x 29700 pixels, 623 megapixels). OpenCV decodes a
PNG whole even when asked for a reduced image (``IMREAD_REDUCED_COLOR_8`` on a 168-megapixel
file peaks at 570 MB and drops the alpha channel; ``IMREAD_UNCHANGED`` peaks at 1.4 GB). So a PNG
above ``STREAM_ABOVE_PIXELS`` is decoded here row by row: the IDAT stream is inflated in bounded
pieces, each scanline is unfiltered (Numba, ``png_kernels``) and box-averaged into the reduced
image at once, so memory stays at a few block rows plus the output. Smaller files go through
``cv2.imread`` and an area resize. Both paths average colour premultiplied by alpha, so the colour
hidden under fully transparent pixels never bleeds into the edges.

Background colour: the bench frames every object domain on plain mid-grey ``GREY`` =
(127, 127, 127). The EfficientNet-Lite cards normalise pixels as (x - 127) / 128, so this grey is
the network's zero input: the background adds as little signal of its own as a plain colour can.
It is also the best of white, black and grey for nearest-class-mean accuracy measured on the
photos alone (two stratified halves, 3 seeds, int8 Lite0: grey 0.853, black 0.834, white 0.808),
a source-only choice; and, unlike black, it keeps the black line art of clipart visible.
``composite`` itself defaults to ``WHITE``, the page colour drawings are made for; the exporter's
calibration images use that default, and changing it would change the exported int8 model.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from edge_runtime.bench.datasets.png_kernels import box_accumulate, unfilter_row
from edge_runtime.errors import InputError

TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
GREY = (127, 127, 127)  # the bench's background; see the module docstring
WHITE = (255, 255, 255)
# Above this many pixels a PNG is streamed rather than decoded whole by OpenCV (4 Mpx RGBA is
# 16 MB; the biggest packaged file decoded whole would need 2.5 GB).
STREAM_ABOVE_PIXELS = 1 << 22
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_INFLATE_PIECE = 1 << 22  # bytes of inflated data produced per zlib call (bounds memory)


class PngHeader(NamedTuple):
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlace: int


def png_header(path: str | Path) -> PngHeader:
    """The IHDR fields of a PNG file, read from its first 29 bytes (no decoding)."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != _SIGNATURE or head[12:16] != b"IHDR":
        raise InputError(f"not a PNG file: {path}")
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return PngHeader(width, height, depth, ctype, interlace)


def read_png(path: str | Path, max_side: int = 512) -> np.ndarray:
    """Decode a PNG with its longer side reduced to at most ``max_side`` pixels, aspect kept.

    Returns uint8 BGRA (H, W, 4) when the file has transparency (an alpha channel or a tRNS
    chunk), else BGR (H, W, 3); greyscale comes back as BGR. 16-bit samples keep their high byte.
    Images already within ``max_side`` are returned at full size.
    """
    path = Path(path)
    header = png_header(path)
    if header.width * header.height > STREAM_ABOVE_PIXELS:
        factor = math.ceil(max(header.width, header.height) / max_side)
        return read_png_streamed(path, factor)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"not a readable PNG: {path}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 2:  # grey + alpha, in case OpenCV keeps it as two channels
        image = np.dstack([image[..., :1].repeat(3, axis=2), image[..., 1:]])
    return shrink(image, max_side)


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """Area-resize so the longer side is ``max_side`` (no-op when already within it).

    BGRA is resized premultiplied, then un-premultiplied, like the streaming reader.
    """
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if image.shape[2] == 3:
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    alpha = image[..., 3:].astype(np.float32)
    premultiplied = np.concatenate([image[..., :3] * (alpha / 255.0), alpha], axis=2)
    small = cv2.resize(premultiplied, size, interpolation=cv2.INTER_AREA)
    return _unpremultiply(small[..., :3], small[..., 3:], 255.0)


def _unpremultiply(colour: np.ndarray, alpha: np.ndarray, alpha_max: float) -> np.ndarray:
    """(premultiplied colour, alpha) float -> BGRA uint8; colour is 0 where nothing is opaque."""
    with np.errstate(invalid="ignore", divide="ignore"):
        straight = np.where(alpha > 0, colour * (alpha_max / np.maximum(alpha, 1e-12)), 0.0)
    out = np.concatenate([straight, alpha * (255.0 / alpha_max)], axis=2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _chunks(f) -> Iterator[tuple[bytes, bytes]]:
    """(type, data) of each chunk after the signature, up to IEND."""
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"truncated PNG (no IEND): {f.name}")
        length, kind = struct.unpack(">I4s", head)
        data = f.read(length)
        f.read(4)  # CRC: zlib's own checksum already guards the image data
        if len(data) < length:
            raise InputError(f"truncated PNG chunk {kind!r}: {f.name}")
        yield kind, data
        if kind == b"IEND":
            return


def read_png_streamed(path: str | Path, factor: int) -> np.ndarray:
    """Decode a non-interlaced PNG reduced by an integer ``factor`` (box average), row by row.

    Same output convention as ``read_png``. Memory: ``factor`` raw rows plus the output.
    """
    path = Path(path)
    header = png_header(path)
    if header.interlace:
        raise InputError(f"{path}: interlaced PNG too large to decode whole; not supported")
    if header.color_type not in _CHANNELS or header.bit_depth not in (1, 2, 4, 8, 16):
        raise InputError(f"{path}: unsupported PNG colour type {header.color_type} / depth {header.bit_depth}")
    width, height, depth, ctype = header.width, header.height, header.bit_depth, header.color_type
    bits_per_pixel = _CHANNELS[ctype] * depth
    row_bytes = (width * bits_per_pixel + 7) // 8
    bpp = max(1, bits_per_pixel // 8)  # filter byte distance
    out_w, out_h = -(-width // factor), -(-height // factor)
    sums = np.zeros((out_h, out_w, 4), np.float64)
    block = np.empty((factor, row_bytes), np.uint8)
    prior = np.zeros(row_bytes, np.uint8)
    palette = trns = None
    has_alpha = ctype in (4, 6)
    inflate = zlib.decompressobj()
    pending = bytearray()
    y = 0

    def flush(rows: int) -> None:
        rgba = _to_rgba(block[:rows], header, palette, trns)
        box_accumulate(rgba, factor, sums[(y - 1) // factor])

    with open(path, "rb") as f:
        f.read(8)
        for kind, data in _chunks(f):
            if kind == b"PLTE":
                palette = np.frombuffer(data, np.uint8).reshape(-1, 3)
            elif kind == b"tRNS":
                trns = data
                has_alpha = True
            elif kind == b"IDAT":
                piece = inflate.decompress(data, _INFLATE_PIECE)
                while True:
                    pending += piece
                    usable = len(pending) // (row_bytes + 1)
                    if usable:
                        rows = np.frombuffer(bytes(pending[: usable * (row_bytes + 1)]), np.uint8)
                        del pending[: usable * (row_bytes + 1)]
                        for raw in rows.reshape(usable, row_bytes + 1):
                            if y >= height:
                                break
                            current = block[y % factor]
                            current[:] = raw[1:]
                            unfilter_row(int(raw[0]), current, prior, bpp)
                            prior = current.copy()
                            y += 1
                            if y % factor == 0 or y == height:
                                flush((y - 1) % factor + 1)
                    if not inflate.unconsumed_tail:
                        break
                    piece = inflate.decompress(inflate.unconsumed_tail, _INFLATE_PIECE)
    if y < height:
        raise InputError(f"truncated PNG image data: {path} ({y} of {height} rows)")
    # Pixels per output block (edge blocks are partial).
    rows_in = np.minimum(factor, height - np.arange(out_h) * factor)[:, None, None]
    cols_in = np.minimum(factor, width - np.arange(out_w) * factor)[None, :, None]
    count = (rows_in * cols_in).astype(np.float64)
    mean = sums / count
    bgra = _unpremultiply(mean[..., 2::-1], mean[..., 3:], 255.0)  # RGB sums -> BGR order
    return bgra if has_alpha else bgra[..., :3].copy()


def _samples(rows: np.ndarray, depth: int, per_pixel: int, width: int) -> np.ndarray:
    """Raw unfiltered rows -> (k, width, per_pixel) samples as uint8 (16-bit: high byte)."""
    k = rows.shape[0]
    if depth == 8:
        return rows.reshape(k, width, per_pixel)
    if depth == 16:
        return rows.reshape(k, width, per_pixel, 2)[..., 0]
    bits = np.unpackbits(rows, axis=1)[:, : width * per_pixel * depth].reshape(k, -1, depth)
    values = (bits * (1 << np.arange(depth - 1, -1, -1, dtype=np.uint8))).sum(axis=2, dtype=np.uint8)
    return values.reshape(k, width, per_pixel)


def _to_rgba(rows: np.ndarray, header: PngHeader, palette: np.ndarray | None, trns: bytes | None) -> np.ndarray:
    """Unfiltered scanlines -> (k, width, 4) uint8 RGBA, applying PLTE/tRNS as the spec says."""
    ctype, depth, width = header.color_type, header.bit_depth, header.width
    samples = _samples(rows, depth, _CHANNELS[ctype], width)
    k = rows.shape[0]
    rgba = np.empty((k, width, 4), np.uint8)
    if ctype == 3:
        if palette is None:
            raise InputError("PNG palette image without a PLTE chunk")
        table = np.zeros((256, 4), np.uint8)
        table[:, 3] = 255
        table[: len(palette), :3] = palette
        if trns:
            table[: len(trns), 3] = np.frombuffer(trns, np.uint8)
        return table[samples[..., 0]]
    if ctype in (0, 4):
        grey = samples[..., 0]
        if depth < 8:  # scale 1/2/4-bit grey to 0..255
            grey = (grey.astype(np.uint16) * 255 // ((1 << depth) - 1)).astype(np.uint8)
        rgba[..., :3] = grey[..., None]
    else:
        rgba[..., :3] = samples[..., :3]
    if ctype in (4, 6):
        rgba[..., 3] = samples[..., -1]
    else:
        rgba[..., 3] = 255
        if trns:  # colour key: one exact colour is transparent (compared at the kept precision)
            key = np.frombuffer(trns, ">u2").astype(np.uint16)
            key = (key >> 8) if depth == 16 else key
            if ctype == 0 and depth < 8:
                key = key * 255 // ((1 << depth) - 1)
            rgba[..., 3][np.all(rgba[..., : len(key)] == key.astype(np.uint8), axis=-1)] = 0
    return rgba


def composite(image: np.ndarray, background: int | tuple[int, int, int] = WHITE) -> np.ndarray:
    """Alpha-composite BGRA on a plain ``background`` (BGR, or one grey value) -> BGR uint8.

    BGR input is returned unchanged; greyscale is expanded to BGR.

    >>> pixel = np.array([[[0, 0, 200, 128]]], np.uint8)  # half-transparent red
    >>> composite(pixel)[0, 0].tolist()
    [127, 127, 227]
    """
    if image.dtype != np.uint8:
        raise InputError(f"composite expects uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 3:
        return image
    if image.shape[2] != 4:
        raise InputError(f"composite expects (H, W, 3 or 4) pixels, got shape {image.shape}")
    back = np.broadcast_to(np.asarray(background, np.float32), (3,))
    alpha = image[..., 3:].astype(np.float32) / 255.0
    out = image[..., :3].astype(np.float32) * alpha + back * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def tuxpaint_photos(categories: Iterable[str] | None = None, root: Path = TUXPAINT_STAMPS) -> list[Path]:
    """Photo stamps of Tux Paint, as PNG paths in sorted (deterministic) order.

    ``categories`` are folders relative to ``root`` (e.g. ``"animals/birds"``), searched
    recursively; None means every folder. Not photos, hence left out: folders named ``cartoon``
    (drawings), the ``symbols`` tree (letters, maths signs, chess glyphs, shapes), SVG stamps
    (drawings), and ``*_mirror.png`` (mirror images of another stamp: duplicates).
    """
    folders = [root] if categories is None else [root / c for c in categories]
    found: set[Path] = set()
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"no such Tux Paint stamp folder: {folder} (is tuxpaint-stamps-default installed?)")
        for path in folder.rglob("*.png"):
            parts = path.relative_to(root).parts
            if "cartoon" in parts or parts[0] == "symbols" or path.stem.endswith("_mirror"):
                continue
            found.add(path)
    return sorted(found)
