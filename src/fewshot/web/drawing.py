"""A drawing from the browser turned into what the Omniglot network was trained on.

The embedded Omniglot images were made from the official 105x105 binary drawings by a Lanczos resize to 28x28
with the ink as 255 on a background of 0 (:mod:`fewshot.datasets.omniglot`). A drawing made with a mouse differs
in three ways: its size and place on the canvas, its stroke width (a pen of a few screen pixels, any zoom), and
possibly its polarity. :func:`to_omniglot` undoes all three, then applies the same resize as the data:

1. grey, ink bright: alpha is laid over black; a light border means dark ink on paper, so it is inverted;
2. ink = pixels at least half as bright as the brightest; cropped to the ink's bounding box;
3. scaled so the longer side of the box is 65 px in a 105 px frame (the official drawings' median), centred
   on its centre of mass (the embedded drawings' mean centre is at 13.5 of 28);
4. thinned to a one-pixel skeleton (Zhang & Suen 1984) and redrawn with a round pen of the dataset's width
   (``STROKE_WIDTH``, measured on the raw drawings: see the constant);
5. Lanczos to 28x28, as the data.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
from PIL import Image

FRAME = 105  # the official Omniglot drawings are 105x105
SIZE = 28
# Both constants were measured on 2,000 official 105x105 evaluation drawings (100 from each alphabet's zip):
EXTENT = 65  # median longest side of the ink's bounding box, in pixels of the 105 frame
# A round pen of this diameter drawn along this module's skeleton gives strokes 5.26 px wide (ink area over
# skeleton length), against the official drawings' median of 5.3 px.
STROKE_WIDTH = 4.5
MAX_SIDE = 1024  # the largest drawing accepted, in pixels per side
MAX_DATA_URL = 4_000_000  # characters of a data URL (a 1024x1024 PNG of a drawing is far smaller)
_DATA_URL = re.compile(r"^data:image/png;base64,(?P<data>[A-Za-z0-9+/=\s]+)$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DrawingError(ValueError):
    """The image cannot be used; the message says what to send instead."""


def decode_png(data_url: str) -> np.ndarray:
    """A ``data:image/png;base64,...`` URL as a grey ``uint8`` array ``(h, w)``, ink bright on black.

    Transparent pixels count as black background (a canvas that was never filled is transparent).

    Raises:
        DrawingError: not a PNG data URL, bad base64, not a PNG, unreadable, or larger than MAX_SIDE.
    """
    if len(data_url) > MAX_DATA_URL:
        raise DrawingError(f"the image is {len(data_url)} characters long; send at most {MAX_DATA_URL}")
    match = _DATA_URL.match(data_url)
    if match is None:
        raise DrawingError("image must be a PNG data URL, 'data:image/png;base64,...' (canvas.toDataURL())")
    try:
        raw = base64.b64decode(match["data"], validate=False)
    except (binascii.Error, ValueError):
        raise DrawingError(
            "the image's base64 data is malformed; send canvas.toDataURL('image/png')"
        ) from None
    if not raw.startswith(_PNG_SIGNATURE):
        raise DrawingError("the image data is not a PNG file; send canvas.toDataURL('image/png')")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format != "PNG":
                raise DrawingError("the image data is not a PNG file")
            w, h = image.size  # read from the header, before any pixel is decoded
            if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
                raise DrawingError(f"the image is {w}x{h} pixels; send at most {MAX_SIDE}x{MAX_SIDE}")
            rgba = image.convert("RGBA")
    except DrawingError:
        raise
    except Exception as e:  # PIL raises many types for truncated or damaged files
        raise DrawingError(f"the PNG cannot be decoded ({type(e).__name__}); send a complete PNG") from None
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return np.asarray(Image.alpha_composite(black, rgba).convert("L"))


def from_pixels(pixels: list[list[float]]) -> np.ndarray:
    """A square grey array (values 0..255, ink bright) as ``uint8`` ``(s, s)``, 28 <= s <= 105.

    Raises:
        DrawingError: ragged, not square, the wrong size, or values outside 0..255.
    """
    rows = {len(r) if isinstance(r, list) else -1 for r in pixels}
    if not pixels or len(rows) != 1 or min(rows) < 1:
        raise DrawingError(
            "pixels must be a square list of equally long rows of numbers (28x28 up to 105x105)"
        )
    a = np.asarray(pixels, dtype=np.float64)
    if a.shape[0] != a.shape[1] or not SIZE <= a.shape[0] <= FRAME:
        raise DrawingError(
            f"pixels is {a.shape[0]}x{a.shape[1]}; send a square of {SIZE}x{SIZE} to {FRAME}x{FRAME}"
        )
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise DrawingError("pixels must be numbers from 0 (background) to 255 (ink)")
    return a.round().astype(np.uint8)


def skeleton(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide skeleton of a boolean image by Zhang & Suen's (1984) thinning, vectorised.

    Each pass removes, in two sub-steps, the boundary pixels whose removal keeps the shape connected
    (2..6 neighbours set, exactly one 0->1 transition around them) until nothing changes.
    """
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for first in (True, False):
            # neighbours P2..P9, clockwise from north, each an (h, w) view of the padded image
            p = [img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:],
                 img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]]  # fmt: skip
            count = sum(q.astype(np.int32) for q in p)
            transitions = sum(((p[i] == 0) & (p[(i + 1) % 8] == 1)).astype(np.int32) for i in range(8))
            if first:
                side = (p[0] * p[2] * p[4] == 0) & (p[2] * p[4] * p[6] == 0)
            else:
                side = (p[0] * p[2] * p[6] == 0) & (p[0] * p[4] * p[6] == 0)
            centre = img[1:-1, 1:-1]
            remove = (centre == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & side
            if remove.any():
                centre[remove] = 0  # a view: writes into img
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a boolean drawing in pixels: ink area over skeleton length."""
    length = skeleton(mask).sum()
    return float(mask.sum() / length) if length else 0.0


def _pen(mask: np.ndarray, width: float) -> np.ndarray:
    """Every pixel within ``width / 2`` of a set pixel of ``mask`` (a round pen drawn along it)."""
    radius = width / 2
    r = int(np.ceil(radius))
    out = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= radius * radius:
                y, x = ys + dy, xs + dx
                keep = (y >= 0) & (y < h) & (x >= 0) & (x < w)
                out[y[keep], x[keep]] = True
    return out


def to_omniglot(grey: np.ndarray) -> np.ndarray:
    """A drawing (``uint8`` ``(h, w)``, any size up to MAX_SIDE) as a 28x28 Omniglot-like ``uint8`` image.

    Raises:
        DrawingError: the drawing has no ink.
    """
    a = grey.astype(np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if np.median(border) > 127:  # dark ink on light paper: make the ink bright, as in Omniglot
        a = 255 - a
    if a.max() < 32:
        raise DrawingError("the drawing is empty; draw a character first")
    ink = a >= a.max() / 2
    ys, xs = np.nonzero(ink)
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = EXTENT / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    # scaled as grey (box filter: the fraction of each new pixel covered by ink), then ink again at one half
    scaled = Image.fromarray(crop.astype(np.uint8) * 255).resize((w, h), Image.Resampling.BOX)
    lines = skeleton(np.asarray(scaled) >= 128)
    if not lines.any():  # a dot smaller than half a pixel after scaling: keep its place
        lines[h // 2, w // 2] = True
    ys, xs = np.nonzero(lines)
    frame = np.zeros((FRAME, FRAME), dtype=bool)
    # centre of mass to the frame's centre; anything pushed past the edge is clipped
    top, left = round((FRAME - 1) / 2 - ys.mean()), round((FRAME - 1) / 2 - xs.mean())
    y, x = ys + top, xs + left
    keep = (y >= 0) & (y < FRAME) & (x >= 0) & (x < FRAME)
    frame[y[keep], x[keep]] = True
    drawn = _pen(frame, STROKE_WIDTH)
    # the dataset's own conversion: binary 105x105 -> grey -> Lanczos to 28x28 (ink 255)
    small = Image.fromarray(drawn.astype(np.uint8) * 255).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.uint8)


def from_omniglot(image: np.ndarray) -> np.ndarray:
    """A 28x28 Omniglot image through :func:`to_omniglot` (enlarged 4x first), as a drawing would be.

    The one-shot page compares drawings with support images prepared this way, so both sides have the same size,
    place and stroke width: at 10 ways this took another person's drawing of a support character, enlarged and
    redrawn with a thick pen, from 88.0% to 92.0% correct (400 tries; 5 ways: 93.0% to 93.5%, 200 tries).
    """
    big = Image.fromarray(image).resize((4 * image.shape[1], 4 * image.shape[0]), Image.Resampling.BILINEAR)
    return to_omniglot(np.asarray(big))


def png_data_url(image: np.ndarray, scale: int = 1) -> str:
    """A grey ``uint8`` image as a PNG data URL (optionally enlarged ``scale`` times, nearest neighbour)."""
    picture = Image.fromarray(image)
    if scale > 1:
        picture = picture.resize((image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
