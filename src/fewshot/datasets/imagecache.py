"""Decode a split of an image benchmark once, keep it as one memory-mapped ``.npy``, and read that afterwards.

A split is cached per (data set, layout, split, image size, requested classes, source files) as two files in
the cache folder:

* ``<stem>.json``: format, fingerprint, class names and the number of images of each class (images are stored
  grouped by class, so the labels are ``repeat(arange(k), counts)``);
* ``<stem>.npy``: every image, ``uint8 (n, 3, s, s)`` (channels first, what :class:`ClassDataset` holds).

The fingerprint covers what fixes the pixels: resolved paths, sizes and modification times of the source
files, the layout, the size and the Pillow version. The images are decoded straight into a temporary ``.npy``
beside the final one (memory-mapped, so a 9 GB split never sits in RAM), the JSON is written, and only then the
``.npy`` is renamed into place: a present ``.npy`` always has its JSON, and a failure (a bad image, a refused
pickle, Ctrl-C) leaves nothing under a final name. Loading maps the file copy-on-write (``mmap_mode="c"``): the
tensor shares the mapped pages (no copy, nothing read until used) and is writable, as torch wants, without ever
changing the file (pages written to become private to the process).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image
from tqdm import tqdm

from fewshot.datasets.base import ClassDataset
from fewshot.datasets.folder import IMAGE_ERRORS
from fewshot.datasets.storage import DatasetError
from fewshot.io import _FILE_MODE, write_json

FORMAT = "fewshot-imageset/1"
_CHUNK = 1024  # images copied per step from an array source: bounded memory, and a progress bar that moves


@dataclass
class Built:
    """A split ready to be written: its classes, images per class, and how to fill the image array.

    ``write(out, advance)`` fills ``out`` (``uint8 (sum(counts), 3, s, s)``) class by class, in the order of
    ``class_names``, calling ``advance(k)`` after every ``k`` images.
    """

    class_names: list[str]
    counts: list[int]
    write: Callable[[np.ndarray, Callable[[int], Any]], None]


@dataclass
class Plan:
    """How one split is read: a layout name, the identity of its sources (cheap to compute: ``stat`` only), and
    ``build``, which does the expensive reading and checking and is called only when the cache misses."""

    layout: str
    identity: list[str]
    build: Callable[[], Built]
    key: list[str] = field(default_factory=list)  # anything else that changes the result (e.g. class list)


def stat_id(path: Path) -> str:
    """``"<resolved path> <size> <mtime_ns>"``: changes when the file is replaced or rewritten."""
    st = path.stat()
    return f"{path.resolve()} {st.st_size} {st.st_mtime_ns}"


def load_or_build(name: str, split: str, size: int, plan: Plan, cache: Path, progress: bool) -> ClassDataset:
    """The split from the cache when its fingerprint matches, else built, written to the cache and mapped."""
    digest = hashlib.sha256()
    for part in (
        FORMAT,
        name,
        plan.layout,
        split,
        str(size),
        f"Pillow {PIL.__version__}",
        *plan.key,
        *plan.identity,
    ):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\n")
    fingerprint = digest.hexdigest()
    stem = f"{name}-{split}-{size}px-{plan.layout}-{fingerprint[:16]}"
    images_path, meta_path = cache / f"{stem}.npy", cache / f"{stem}.json"
    cached = _read(images_path, meta_path, fingerprint, size)
    if cached is not None:
        return cached
    built = plan.build()
    shape = (sum(built.counts), 3, size, size)
    tmp, out = _open_output(images_path, shape)
    try:
        label = f"{name} {split} ({size}x{size})"
        # disable=None: tqdm draws the bar only on a terminal (quiet in logs and tests)
        with tqdm(
            total=shape[0], desc=label, unit="img", disable=None if progress else True, leave=False
        ) as bar:
            built.write(out, bar.update)
        if tmp is None:  # no writable cache: the decoded images stay in memory
            return _dataset(out, built.class_names, built.counts)
        out.flush()
        del out  # closes the mapping before the file is renamed
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        # The labels go first: a .npy under its final name then always has its .json.
        meta = {"format": FORMAT, "fingerprint": fingerprint, "dataset": name, "split": split,
                "layout": plan.layout, "image_size": size, "class_names": built.class_names,
                "counts": built.counts}  # fmt: skip
        write_json(meta_path, meta)
        try:
            os.replace(tmp, images_path)
        except BaseException:
            meta_path.unlink(missing_ok=True)
            raise
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return _dataset(np.load(images_path, mmap_mode="c"), built.class_names, built.counts)


def _open_output(images_path: Path, shape: tuple[int, ...]) -> tuple[Path | None, np.ndarray]:
    """A temporary memory-mapped ``.npy`` beside ``images_path``; ``(None, array in memory)`` if impossible."""
    tmp: Path | None = None
    try:
        images_path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=images_path.parent, prefix=f".{images_path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        if hasattr(os, "posix_fallocate"):
            # Reserve the blocks now: a memory map that runs out of disk later kills the process (SIGBUS).
            with tmp.open("rb+") as f:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(tmp))
        return tmp, out
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        warnings.warn(
            f"cannot write the image cache in {images_path.parent} ({e}); decoding into memory, and again next "
            "time: pass cache_dir= or set FEWSHOT_CACHE to a writable folder with room",
            RuntimeWarning,
            stacklevel=4,
        )
        return None, np.empty(shape, dtype=np.uint8)


def _read(images_path: Path, meta_path: Path, fingerprint: str, size: int) -> ClassDataset | None:
    if not (images_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        images = np.load(images_path, mmap_mode="c")
        n = sum(meta["counts"])
        if meta["format"] != FORMAT or meta["fingerprint"] != fingerprint:
            reason = "it was made from other files"
        elif images.dtype != np.uint8 or images.shape != (n, 3, size, size):
            reason = f"it holds {images.dtype} {images.shape}, expected uint8 {(n, 3, size, size)}"
        else:
            return _dataset(images, meta["class_names"], meta["counts"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = f"{type(e).__name__}: {e}"
    warnings.warn(
        f"ignoring cache file {images_path} ({reason}); decoding again", RuntimeWarning, stacklevel=4
    )
    return None


def _dataset(images: np.ndarray, class_names: Sequence[str], counts: Sequence[int]) -> ClassDataset:
    labels = torch.from_numpy(np.repeat(np.arange(len(counts)), counts))
    return ClassDataset(torch.from_numpy(images), labels, list(class_names))


# ----------------------------------------------------------------------------------------------------------
# Filling the array


def decode_image(source: Path | bytes | np.ndarray, size: int, where: str) -> np.ndarray:
    """An encoded image (a file, or its bytes) as RGB ``uint8 (3, size, size)``, resized with Lanczos.

    The image is squashed to a square without cropping, as the usual mini-ImageNet preprocessing does.

    Raises:
        DatasetError: naming ``where``, when Pillow cannot read the image.
    """
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.LANCZOS)
            a = np.asarray(im, dtype=np.uint8)
    except IMAGE_ERRORS as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"{where} is not a readable image ({reason}); remove it or replace it") from None
    return a.transpose(2, 0, 1)


def resize_array(image: np.ndarray, size: int) -> np.ndarray:
    """``uint8 (3, h, w)`` -> ``(3, size, size)`` with Lanczos (the decoder's resampling, for a size asked)."""
    im = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8).transpose(2, 0, 1)


def write_encoded(sources: Sequence[tuple[Path | bytes | np.ndarray, str]], size: int) -> Callable:
    """A ``Built.write`` that decodes ``(file or bytes, where)`` pairs in order."""

    def write(out: np.ndarray, advance: Callable[[int], Any]) -> None:
        for i, (source, where) in enumerate(sources):
            out[i] = decode_image(source, size, where)
            advance(1)

    return write


def write_array(
    images: np.ndarray, rows: np.ndarray, size: int, channels_last: bool, bgr: bool = False
) -> Callable:
    """A ``Built.write`` copying ``images[rows]`` (``(N, h, w, 3)`` or ``(N, 3, h, w)``), resized if needed.

    Args:
        bgr: the array stores blue, green, red (OpenCV's order); it is turned into RGB.
    """

    def write(out: np.ndarray, advance: Callable[[int], Any]) -> None:
        for start in range(0, len(rows), _CHUNK):
            chunk = np.asarray(images[rows[start : start + _CHUNK]])
            chunk = chunk.transpose(0, 3, 1, 2) if channels_last else chunk  # (b, 3, h, w)
            chunk = chunk[:, ::-1] if bgr else chunk
            if chunk.shape[-2:] == (size, size):
                out[start : start + len(chunk)] = chunk
            else:
                for j, image in enumerate(chunk):
                    out[start + j] = resize_array(image, size)
            advance(len(chunk))

    return write


def npz_array(path: Path, key: str) -> np.ndarray:
    """``key`` of an ``.npz``, memory-mapped when stored uncompressed (as ``np.savez`` writes), else read.

    A 9 GB tieredImageNet split is then read page by page as it is copied, instead of all at once.

    Raises:
        DatasetError: the file is not a readable ``.npz``, lacks ``key`` or holds objects.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n.removesuffix(".npy") for n in zf.namelist()]
            if key not in names:
                raise DatasetError(f"{path} has no {key!r} array (it has {', '.join(names) or 'none'})")
            info = zf.getinfo(f"{key}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with path.open("rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)  # the member's local header: its name and extra field come next
                if local[:4] != b"PK\x03\x04":
                    raise zipfile.BadZipFile("bad local file header")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                f.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(f)
                if version in ((1, 0), (2, 0)):
                    read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
                    shape, fortran, dtype = read_header(f)
                    if dtype.hasobject:
                        raise DatasetError(f"{path}: {key!r} holds Python objects, not image data")
                    order = "F" if fortran else "C"
                    return np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape, order=order)
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except DatasetError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
        raise DatasetError(
            f"{path} is not a readable .npz: it is truncated or corrupt ({type(e).__name__}: {e}); "
            "get a complete copy"
        ) from None
