"""PNG reading on the real packaged files: reduced decoding, alpha, compositing, the photo list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.bench.datasets.images import (
    GREY,
    STREAM_ABOVE_PIXELS,
    TUXPAINT_STAMPS,
    composite,
    png_header,
    read_png,
    read_png_streamed,
    tuxpaint_photos,
)
from edge_runtime.errors import InputError

CLIPART = Path("/usr/share/openclipart/png")
# One real file per PNG flavour: (bit depth, colour type) -> file under openclipart.
FLAVOURS = {
    (8, 6): "animals/2_dead_frogs_lumen_desig_01.png",  # RGBA
    (8, 4): "animals/armadillo_architetto_fra_01.png",  # grey + alpha
    (8, 3): "animals/birds/contour_bat.png",  # palette + tRNS
    (8, 2): "computer/icons/applications/stylized_cd_jakob_chaosi_.png",  # RGB
    (8, 0): "logos/bpoe_tom_hung_.png",  # grey
    (4, 3): "recreation/religion/simple_cross_01_01.png",  # 4-bit palette
    (2, 3): "signs_and_symbols/barcode_upca.png",  # 2-bit palette
    (1, 3): "electronics/bulb/light_bulb_karl_bartel_01.png",  # 1-bit palette
}
BIG = CLIPART / "people/man_head_mikhail_a.medve_.png"  # 4940 x 8240 RGBA, 41 Mpx


def box_reference(path: Path, factor: int) -> np.ndarray:
    """Whole-file OpenCV decode, then a plain numpy premultiplied box average (partial edge blocks)."""
    whole = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if whole.ndim == 2:
        whole = cv2.cvtColor(whole, cv2.COLOR_GRAY2BGR)
    if whole.shape[2] == 3:
        whole = np.dstack([whole, np.full(whole.shape[:2], 255, np.uint8)])
    h, w = whole.shape[:2]
    oh, ow = -(-h // factor), -(-w // factor)
    padded = np.zeros((oh * factor, ow * factor, 4))
    alpha = whole[..., 3:].astype(float)
    padded[:h, :w, :3] = whole[..., :3] * alpha / 255
    padded[:h, :w, 3:] = alpha
    count = np.zeros((oh * factor, ow * factor))
    count[:h, :w] = 1
    sums = padded.reshape(oh, factor, ow, factor, 4).sum(axis=(1, 3))
    mean = sums / count.reshape(oh, factor, ow, factor).sum(axis=(1, 3))[..., None]
    colour = np.where(mean[..., 3:] > 0, mean[..., :3] * 255 / np.maximum(mean[..., 3:], 1e-12), 0)
    return np.clip(np.rint(np.concatenate([colour, mean[..., 3:]], axis=2)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("factor", [3, 4])
def test_streamed_decode_matches_whole_decode(flavour, factor):
    path = CLIPART / FLAVOURS[flavour]
    header = png_header(path)
    assert (header.bit_depth, header.color_type) == flavour
    streamed = read_png_streamed(path, factor)
    reference = box_reference(path, factor)
    assert streamed.shape[:2] == reference.shape[:2]
    # Compare what a viewer sees: both laid on the same background.
    assert np.array_equal(composite(streamed, GREY), composite(reference, GREY))
    if streamed.shape[2] == 4:
        assert np.array_equal(streamed[..., 3], reference[..., 3])


def peak_rss_kb(statement: str) -> tuple[list[str], int]:
    """Run ``statement`` in a fresh interpreter (after the reader's imports); its printout and peak RSS."""
    code = (
        "import resource\n"
        "from edge_runtime.bench.datasets.images import read_png\n"
        "read_png(%r)\n"
        % str(CLIPART / FLAVOURS[(8, 6)])  # warm-up: Numba kernels loaded
        + statement
        + "\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    return out[:-1], int(out[-1])


def test_big_png_is_decoded_reduced_with_alpha_in_bounded_memory():
    # 4940 x 8240 RGBA: 163 MB of pixels if decoded whole; streamed, the peak barely moves.
    header = png_header(BIG)
    assert header.width * header.height > STREAM_ABOVE_PIXELS
    _, baseline = peak_rss_kb("")
    out, peak = peak_rss_kb(
        f"image = read_png({str(BIG)!r}, max_side=512)\n"
        "print(*image.shape, image[..., 3].min(), image[..., 3].max())"
    )
    h, w, channels, alpha_min, alpha_max = map(int, out)
    assert (h, w) == (485, 291)  # reduced by the integer factor ceil(8240 / 512) = 17
    assert channels == 4 and alpha_min == 0 and alpha_max == 255  # transparency kept
    whole_kb = header.width * header.height * 4 // 1024
    assert peak - baseline < whole_kb // 4


def test_read_png_small_file_keeps_alpha_and_bounds_size():
    path = CLIPART / FLAVOURS[(8, 6)]  # 744 x 1052
    image = read_png(path, max_side=200)
    assert image.dtype == np.uint8 and image.shape[2] == 4 and max(image.shape[:2]) == 200
    assert read_png(CLIPART / FLAVOURS[(8, 2)], max_side=100).shape[2] == 3  # no transparency: BGR
    assert read_png(CLIPART / FLAVOURS[(8, 0)]).shape[2] == 3  # grey comes back as BGR


def test_read_png_rejects_non_png(tmp_path):
    bogus = tmp_path / "x.png"
    bogus.write_bytes(b"not a png at all, not even close")
    with pytest.raises(InputError, match="not a PNG"):
        read_png(bogus)


def test_composite_blends_on_the_background():
    bgra = np.array([[[0, 0, 200, 0], [0, 0, 200, 255], [10, 20, 30, 128]]], np.uint8)
    out = composite(bgra, GREY)
    assert out.shape == (1, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [127, 127, 127]  # transparent -> background
    assert out[0, 1].tolist() == [0, 0, 200]  # opaque -> itself
    expected = np.rint(np.array([10, 20, 30]) * 128 / 255 + 127 * 127 / 255).tolist()
    assert out[0, 2].tolist() == expected
    bgr = np.zeros((2, 2, 3), np.uint8)
    assert composite(bgr) is bgr


def test_tuxpaint_photos_are_sorted_photos_only():
    photos = tuxpaint_photos()
    assert photos == sorted(photos) and len(photos) > 300
    for path in photos:
        parts = path.relative_to(TUXPAINT_STAMPS).parts
        assert path.suffix == ".png" and "cartoon" not in parts and parts[0] != "symbols"
        assert not path.stem.endswith("_mirror")
    birds = tuxpaint_photos(["animals/birds"])
    assert birds and set(birds) <= set(photos)
    assert all(p.relative_to(TUXPAINT_STAMPS).parts[:2] == ("animals", "birds") for p in birds)
    with pytest.raises(InputError):
        tuxpaint_photos(["no/such/folder"])
