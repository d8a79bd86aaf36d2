"""Omniglot (Lake et al. 2015): 1,623 handwritten characters from 50 alphabets, 20 drawings each.

Three ways to get the images, all giving the same decoded pixels:

* nothing to pass: a lossless 28x28 copy of all 32,460 drawings ships inside the package
  (``fewshot/data/omniglot28.npz``), so the default works offline;
* ``root=``: a folder holding the data in any of the usual layouts (detected per split):
  ``images_background/<Alphabet>/characterNN/*.png`` (extracted), ``images_background.zip`` (the official
  archive) or ``images_background/<Alphabet>.zip`` (one zip per alphabet), and the same for
  ``images_evaluation``. Zips are read in place, nothing is extracted;
* ``download=True``: the two official archives are fetched into the cache, checked by git blob id, and read.

PNGs are decoded once per source and image size (mode ``'1'`` -> ``'L'``, Lanczos resize, inverted so that ink
is 255 and background 0) and saved as one ``.npz`` in the cache folder; later loads read that file (no pickle)
and never decode PNGs again.

Class splits: ``scheme="vinyals"`` (Vinyals et al. 2016, as used by Snell et al. 2017) makes every
(character, rotation by 0/90/180/270 degrees) a class; ``scheme="lake"`` uses the official background
(964 characters) / evaluation (659 characters) division with one class per character and no rotation.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from fewshot.datasets.base import ClassDataset
from fewshot.datasets.storage import (
    DatasetError,
    check_member_name,
    download_file,
    git_blob_sha1,
    resolve_cache_dir,
    write_npz,
)
from fewshot.io import atomic_write
from fewshot.tasks.episodes import group_by_label

PathLike = str | os.PathLike[str]

OFFICIAL_BASE_URL = (
    "https://raw.githubusercontent.com/brendenlake/omniglot/057f034baf2ecb8530bc5710e5a23584d2a519cc/python/"
)
"""Where :func:`download_omniglot` fetches the archives (a fixed commit, so the checksums below hold)."""

OFFICIAL_BLOB_SHA1: dict[str, str] = {
    "images_background.zip": "71fd167eb6fdd312049395fbd247147a4b234231",
    "images_evaluation.zip": "8ccde0ed1565641f1fa8c57cdc6ff634e15fc5c1",
}
"""Git blob id (SHA-1 of ``b"blob <size>\\0" + content``) of each official archive."""

SCHEMES = ("vinyals", "lake")
VINYALS_SPLITS = ("train", "val", "trainval", "test")
LAKE_SPLITS = ("background", "evaluation")
_LAKE_ALIASES = {
    "background": "background",
    "evaluation": "evaluation",
    "train": "background",
    "test": "evaluation",
}
# Folder / archive name of each official split, in the fixed order images are stored in.
_SPLIT_FOLDERS = {"background": "images_background", "evaluation": "images_evaluation"}

EMBEDDED_IMAGE_SIZE = 28
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
EMBEDDED_PATH = DATA_DIR / "omniglot28.npz"
VINYALS_DIR = DATA_DIR / "vinyals"

_CACHE_NAME = "omniglot"
_REPLACE_HINT = "; replace it with a good copy, or delete it and use download=True"
_FORMAT = "fewshot-omniglot/1"
_DRAWING_RE = re.compile(r"^(\d+)_(\d+)\.png$")
_CHARACTER_RE = re.compile(r"^character\d+$")
_ROTATION_RE = re.compile(r"^rot(000|090|180|270)$")
_NPZ_KEYS = (
    "format",
    "fingerprint",
    "images",
    "split_names",
    "split_index",
    "alphabet_names",
    "alphabet_index",
    "character_names",
    "character_index",
    "drawer",
    "char_id",
)


@dataclass(frozen=True, eq=False)
class OmniglotImages:
    """Every decoded Omniglot drawing with its metadata, in a fixed order.

    The order is: background before evaluation, then alphabet, character folder and file name, each sorted as
    plain strings; so a character's 20 drawings are contiguous and sorted by drawer.

    Attributes:
        images: ``uint8``, shape ``(n, 1, s, s)``; ink 255, background 0.
        split: official split of each image, ``"background"`` or ``"evaluation"``, shape ``(n,)``.
        alphabet: alphabet folder name of each image (e.g. ``"Greek"``), shape ``(n,)``.
        character: character folder name of each image (e.g. ``"character01"``), shape ``(n,)``.
        drawer: who drew it, ``1..20`` (the ``DD`` of ``NNNN_DD.png``), shape ``(n,)``.
        char_id: global character number ``1..1623`` (the ``NNNN``), shape ``(n,)``.
        fingerprint: SHA-256 identifying the source files, image size and decoder that produced the pixels.
    """

    images: Tensor
    split: np.ndarray
    alphabet: np.ndarray
    character: np.ndarray
    drawer: np.ndarray
    char_id: np.ndarray
    fingerprint: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def character_keys(self) -> np.ndarray:
        """``"<Alphabet>/<characterNN>"`` of every image, shape ``(n,)``."""
        return np.char.add(np.char.add(self.alphabet, "/"), self.character)

    def __repr__(self) -> str:
        n_chars = len(np.unique(self.character_keys()))
        s = self.image_size
        return f"OmniglotImages({len(self)} images of {s}x{s}, {n_chars} characters)"

    def save(self, path: PathLike, compresslevel: int | None = 9) -> Path:
        """Write to ``path`` as one ``.npz`` (atomically: a temporary file renamed into place).

        Args:
            path: destination file.
            compresslevel: deflate level 0-9, or ``None`` for no compression.
        """
        arrays: dict[str, np.ndarray] = {
            "format": np.array(_FORMAT),
            "fingerprint": np.array(self.fingerprint),
            "images": self.images[:, 0].numpy(),
        }
        # Strings are stored once in a table plus a small index per image: smaller and still pickle-free.
        for name, values, dtype in (
            ("split", self.split, np.uint8),
            ("alphabet", self.alphabet, np.int16),
            ("character", self.character, np.int16),
        ):
            table, index = np.unique(values, return_inverse=True)
            arrays[f"{name}_names"] = table
            arrays[f"{name}_index"] = index.astype(dtype)
        arrays["drawer"] = self.drawer.astype(np.uint8)
        arrays["char_id"] = self.char_id.astype(np.int16)
        return atomic_write(path, lambda f: write_npz(f, arrays, compresslevel))

    @classmethod
    def load(cls, path: PathLike) -> OmniglotImages:
        """Read a file written by :meth:`save` (no pickle involved).

        Raises:
            DatasetError: the file is unreadable or not in this format (the message says why).
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = sorted(set(_NPZ_KEYS) - set(z.files))
                if missing:
                    raise DatasetError(f"{path} is not an Omniglot file (it lacks {', '.join(missing)})")
                a = {key: z[key] for key in _NPZ_KEYS}
        except DatasetError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DatasetError(f"cannot read {path}: {type(e).__name__}: {e}") from None
        if str(a["format"]) != _FORMAT:
            raise DatasetError(f"{path} has format {str(a['format'])!r}, expected {_FORMAT!r}")
        images = a["images"]
        n = images.shape[0] if images.ndim == 3 else -1
        if images.dtype != np.uint8 or n < 0 or images.shape[1] != images.shape[2]:
            raise DatasetError(f"{path}: images must be uint8 (n, s, s), got {images.dtype} {images.shape}")
        columns = {}
        for name in ("split", "alphabet", "character"):
            table, index = a[f"{name}_names"], a[f"{name}_index"].astype(np.int64)
            if index.shape != (n,) or (n and (index.min() < 0 or index.max() >= len(table))):
                raise DatasetError(f"{path}: {name}_index does not match images / {name}_names")
            columns[name] = table[index]
        for name in ("drawer", "char_id"):
            if a[name].shape != (n,):
                raise DatasetError(f"{path}: {name} has shape {a[name].shape}, expected ({n},)")
        return cls(
            images=torch.from_numpy(images).unsqueeze(1),
            split=columns["split"],
            alphabet=columns["alphabet"],
            character=columns["character"],
            drawer=a["drawer"].astype(np.int64),
            char_id=a["char_id"].astype(np.int64),
            fingerprint=str(a["fingerprint"]),
        )


# ----------------------------------------------------------------------------------------------------------
# Public entry points


def omniglot(
    split: str = "train",
    scheme: str = "vinyals",
    root: PathLike | None = None,
    image_size: int = 28,
    download: bool = False,
    cache_dir: PathLike | None = None,
) -> ClassDataset:
    """One split of Omniglot as a :class:`ClassDataset` of ``(n, 1, image_size, image_size)`` uint8 images.

    Args:
        split: ``scheme="vinyals"``: ``"train"`` (4,112 classes), ``"val"`` (688), ``"trainval"`` (4,800) or
            ``"test"`` (1,692). ``scheme="lake"``: ``"background"`` (964 classes) or ``"evaluation"`` (659);
            ``"train"`` / ``"test"`` are accepted as aliases of those.
        scheme: ``"vinyals"``: a class is a (character, rotation) pair, rotations of 0/90/180/270 degrees
            counter-clockwise applied exactly in memory, class names like ``"Greek/character01/rot090"``.
            ``"lake"``: a class is a character (``"Greek/character01"``), no rotation.
        root: folder with the Omniglot files (see the module doc for the layouts); ``None`` uses the copy
            shipped in the package (28x28 only) or, with ``download=True``, the official archives.
        image_size: side of the square images in pixels.
        download: fetch the official archives into ``cache_dir`` (once; checked by checksum) and use them.
        cache_dir: where downloads and decoded images are kept; default ``$FEWSHOT_CACHE/omniglot`` or
            ``~/.cache/fewshot/omniglot``.

    Returns:
        Images grouped by class (class order as in the split file, or sorted for ``"lake"``), 20 per class,
        labels ``0..num_classes-1``.

    Raises:
        ValueError: unknown scheme or split, bad ``image_size``, or a size the embedded copy lacks.
        FileNotFoundError: ``root`` does not exist.
        DatasetError: the files are missing, corrupt, unsafe, or lack characters of the split.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown Omniglot scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    if scheme == "vinyals":
        if split not in VINYALS_SPLITS:
            raise ValueError(
                f"unknown split {split!r} for scheme 'vinyals': choose one of {', '.join(VINYALS_SPLITS)}"
            )
        classes = _parse_vinyals(split)  # read before the images: a bad split fails fast
    else:
        if split not in _LAKE_ALIASES:
            raise ValueError(
                f"unknown split {split!r} for scheme 'lake': choose one of {', '.join(LAKE_SPLITS)} "
                "(or the aliases train, test)"
            )
    data = load_omniglot_images(root=root, image_size=image_size, download=download, cache_dir=cache_dir)
    if scheme == "vinyals":
        return _vinyals_dataset(data, split, classes)
    return _lake_dataset(data, _LAKE_ALIASES[split])


def load_omniglot_images(
    root: PathLike | None = None,
    image_size: int = 28,
    download: bool = False,
    cache_dir: PathLike | None = None,
) -> OmniglotImages:
    """All 32,460 decoded drawings with their metadata (see :class:`OmniglotImages`).

    Args:
        root: folder with the Omniglot files in any supported layout; ``None`` -> embedded copy (or the
            official archives with ``download=True``).
        image_size: side of the square images in pixels; the embedded copy has only 28.
        download: fetch and use the official archives (kept in ``cache_dir``); exclusive with ``root``.
        cache_dir: folder for downloads and the decoded-image cache (default as in :func:`omniglot`).

    Raises:
        ValueError: bad arguments (message says what to pass instead).
        FileNotFoundError: ``root`` does not exist.
        DatasetError: unreadable, corrupt or unsafe files.
    """
    image_size = _check_image_size(image_size)
    if root is not None and download:
        raise ValueError(
            "pass either root= (Omniglot files you already have) or download=True (fetch them), not both"
        )
    if download:
        # Module globals are read at call time so that they can be pointed elsewhere (e.g. a local server).
        source = download_omniglot(cache_dir, base_url=OFFICIAL_BASE_URL)
    elif root is None:
        if image_size != EMBEDDED_IMAGE_SIZE:
            raise ValueError(
                f"the Omniglot copy shipped with fewshot is {EMBEDDED_IMAGE_SIZE}x{EMBEDDED_IMAGE_SIZE}; for "
                f"image_size={image_size} pass root=<folder with the Omniglot files> or download=True"
            )
        return _load_embedded()
    else:
        source = Path(root).expanduser()
    return _load_or_decode(source, image_size, resolve_cache_dir(cache_dir, _CACHE_NAME))


def download_omniglot(
    cache_dir: PathLike | None = None,
    base_url: str = OFFICIAL_BASE_URL,
    checksums: Mapping[str, str] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Fetch ``images_background.zip`` and ``images_evaluation.zip`` into ``cache_dir`` unless already there.

    Each archive is verified by git blob id, both a fresh download and one already in the cache (a cached
    file that fails is deleted and fetched again). A fresh download is also opened and CRC-checked, and
    refused if a member name is absolute or contains ``..``.

    Args:
        cache_dir: destination folder (default ``$FEWSHOT_CACHE/omniglot`` or ``~/.cache/fewshot/omniglot``).
        base_url: folder URL holding the two archives.
        checksums: archive name -> expected git blob id; ``None`` -> :data:`OFFICIAL_BLOB_SHA1`.
        progress: show a progress bar on a terminal.

    Returns:
        The folder holding the two archives (usable as ``root=``).

    Raises:
        DatasetError: network/HTTP failure, incomplete download, checksum mismatch, or an unusable archive;
            nothing is left half-written in ``cache_dir``.
    """
    cache = resolve_cache_dir(cache_dir, _CACHE_NAME)
    expected_ids = OFFICIAL_BLOB_SHA1 if checksums is None else checksums
    for folder in _SPLIT_FOLDERS.values():
        name = f"{folder}.zip"
        expected = expected_ids[name]
        dest = cache / name
        if dest.is_file():
            got = git_blob_sha1(dest)
            if got == expected:
                continue
            warnings.warn(
                f"{dest} has git blob id {got}, expected {expected}: deleting it and downloading it again",
                RuntimeWarning,
                stacklevel=2,
            )
            dest.unlink()
        url = f"{base_url.rstrip('/')}/{name}"
        download_file(url, dest, expected, progress=progress)
        try:
            with _open_zip(dest, fix="") as zf:
                bad = zf.testzip()
            if bad is not None:
                raise DatasetError(f"member {bad} fails its CRC check")
        except (DatasetError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            dest.unlink(missing_ok=True)
            raise DatasetError(
                f"{name} downloaded from {url} is not a usable archive ({e}); it was deleted: try again, "
                "or check base_url"
            ) from None
    return cache


def vinyals_classes(split: str) -> list[str]:
    """Class names (``"<Alphabet>/<characterNN>/rotDDD"``) of a Vinyals split, in file order."""
    if split not in VINYALS_SPLITS:
        raise ValueError(f"unknown Vinyals split {split!r}: choose one of {', '.join(VINYALS_SPLITS)}")
    return [f"{key}/rot{90 * k:03d}" for key, k in _parse_vinyals(split)]


def decode_omniglot(root: PathLike, image_size: int = 28) -> OmniglotImages:
    """Decode every PNG under ``root`` (any supported layout) without touching any cache."""
    entries = _list_entries(Path(root).expanduser())
    size = _check_image_size(image_size)
    return _decode_entries(entries, size, _fingerprint(entries, size))


# ----------------------------------------------------------------------------------------------------------
# Splits


def _parse_vinyals(split: str) -> list[tuple[str, int]]:
    """(``"<Alphabet>/<characterNN>"``, quarter turns) of every class in ``vinyals/<split>.txt``."""
    path = VINYALS_DIR / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"the Vinyals split file {path} is missing (incomplete install): reinstall fewshot"
        )
    classes = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split("/")
        match = _ROTATION_RE.match(parts[-1]) if len(parts) == 3 else None
        if match is None:
            raise DatasetError(
                f"{path}:{n}: expected <Alphabet>/<characterNN>/rot000|090|180|270, got {line!r}"
            )
        classes.append((f"{parts[0]}/{parts[1]}", int(match.group(1)) // 90))
    return classes


def _rows_by_character(keys: np.ndarray) -> dict[str, np.ndarray]:
    """Character key -> row indices (ascending), for a ``(n,)`` array of keys."""
    names, rows = group_by_label(keys)
    return {str(name): r for name, r in zip(names, rows, strict=True)}


def _vinyals_dataset(data: OmniglotImages, split: str, classes: list[tuple[str, int]]) -> ClassDataset:
    rows_of = _rows_by_character(data.character_keys())
    missing = [key for key, _ in classes if key not in rows_of]
    if missing:
        raise DatasetError(
            f"the Omniglot data lacks {len(set(missing))} characters of the Vinyals {split!r} split "
            f"(e.g. {missing[0]}): pass a root= holding both images_background and images_evaluation in full"
        )
    per_class = [rows_of[key] for key, _ in classes]
    counts = np.array([len(r) for r in per_class])
    rows = torch.from_numpy(np.concatenate(per_class))
    labels = torch.from_numpy(np.repeat(np.arange(len(classes)), counts))
    turns = torch.from_numpy(np.repeat(np.array([k for _, k in classes]), counts))
    images = data.images[rows]  # a copy: rotating it in place leaves `data` untouched
    for k in (1, 2, 3):
        mask = turns == k
        if bool(mask.any()):
            # rot90 over (h, w) with k > 0 turns counter-clockwise, like PIL's rotate used by Snell et al.
            images[mask] = torch.rot90(images[mask], k, dims=(-2, -1))
    names = [f"{key}/rot{90 * k:03d}" for key, k in classes]
    return ClassDataset(images, labels, names)


def _lake_dataset(data: OmniglotImages, split: str) -> ClassDataset:
    rows = np.flatnonzero(data.split == split)
    if len(rows) == 0:
        raise DatasetError(
            f"the Omniglot data has no images of the {split} set: "
            f"pass a root= holding {_SPLIT_FOLDERS[split]}"
        )
    names, labels = np.unique(data.character_keys()[rows], return_inverse=True)
    images = data.images[torch.from_numpy(rows)]
    return ClassDataset(images, torch.from_numpy(labels.astype(np.int64)), [str(n) for n in names])


# ----------------------------------------------------------------------------------------------------------
# Reading sources


@dataclass(frozen=True)
class _Entry:
    """One drawing found in a source: where it is and what it is."""

    split: str
    alphabet: str
    character: str
    filename: str
    archive: Path | None  # zip holding the PNG; None when it is a plain file
    member: str  # member name inside ``archive``, or the file path
    token: str  # cheap identity of the content (zip CRC + size, or file size + mtime) for the cache key

    @property
    def where(self) -> str:
        return f"{self.archive}:{self.member}" if self.archive is not None else self.member


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return int(image_size)


def _open_zip(path: Path, fix: str) -> zipfile.ZipFile:
    """Open a zip and refuse it if any member name is unsafe; errors name the file and ``fix``."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DatasetError(
            f"{path} is not a readable zip archive, it is truncated or corrupt ({e}){fix}"
        ) from None
    try:
        for info in zf.infolist():
            check_member_name(info.filename, path)
    except DatasetError:
        zf.close()
        raise
    return zf


def _parse_drawing(parts: list[str]) -> tuple[str, str, str] | None:
    """(alphabet, character, file) from the last path components, or None if it is not a drawing."""
    if len(parts) < 3 or "__MACOSX" in parts:  # macOS resource forks ride along in some re-zipped copies
        return None
    alphabet, character, filename = parts[-3:]
    if alphabet.startswith(".") or not _CHARACTER_RE.match(character) or not _DRAWING_RE.match(filename):
        return None
    return alphabet, character, filename


def _find_sources(root: Path) -> list[tuple[str, str, Path]]:
    """(split, "zip" | "dir", path) of every source of drawings under ``root``."""
    if not root.exists():
        raise FileNotFoundError(
            f"Omniglot root {root} does not exist: pass the folder holding images_background and "
            "images_evaluation (folders or zips), or use download=True"
        )
    if not root.is_dir():
        raise DatasetError(f"Omniglot root {root} is a file: pass the folder that holds it instead")
    sources = []
    for split, folder in _SPLIT_FOLDERS.items():
        archive, directory = root / f"{folder}.zip", root / folder
        # The official single archive wins over a folder next to it (it may be a half-finished extraction).
        if archive.is_file():
            sources.append((split, "zip", archive))
        elif directory.is_dir():
            # hidden files are not alphabets: macOS leaves ._Greek.zip beside Greek.zip on FAT and network drives
            zips = sorted(p for p in directory.glob("*.zip") if p.is_file() and not p.name.startswith("."))
            sources.extend((split, "zip", p) for p in zips)
            if not zips:
                sources.append((split, "dir", directory))
    if not sources:
        raise DatasetError(
            f"no Omniglot data under {root}: expected images_background/ and images_evaluation/ holding "
            "<Alphabet>/characterNN/*.png or <Alphabet>.zip, or the official images_background.zip and "
            "images_evaluation.zip"
        )
    return sources


def _list_entries(root: Path) -> list[_Entry]:
    """Every drawing under ``root``, in the fixed order of :class:`OmniglotImages`."""
    entries: list[_Entry] = []
    for split, kind, path in _find_sources(root):
        if kind == "zip":
            with _open_zip(path, fix=_REPLACE_HINT) as zf:
                for info in zf.infolist():
                    parsed = None if info.is_dir() else _parse_drawing(info.filename.split("/"))
                    if parsed is not None:
                        token = f"{info.CRC:08x}:{info.file_size}"
                        entries.append(_Entry(split, *parsed, path, info.filename, token))
        else:
            entries.extend(_list_folder(split, path))
    if not entries:
        raise DatasetError(
            f"no drawings (<Alphabet>/characterNN/NNNN_DD.png) found under {root}: is it the Omniglot folder?"
        )
    split_order = list(_SPLIT_FOLDERS)
    entries.sort(key=lambda e: (split_order.index(e.split), e.alphabet, e.character, e.filename))
    for a, b in zip(entries, entries[1:], strict=False):
        if (a.split, a.alphabet, a.character, a.filename) == (b.split, b.alphabet, b.character, b.filename):
            raise DatasetError(f"{a.where} and {b.where} are the same drawing twice: remove one of them")
    return entries


def _list_folder(split: str, directory: Path) -> list[_Entry]:
    entries = []
    for alphabet in sorted((p for p in os.scandir(directory) if p.is_dir()), key=lambda p: p.name):
        for character in sorted((p for p in os.scandir(alphabet.path) if p.is_dir()), key=lambda p: p.name):
            for drawing in os.scandir(character.path):
                parsed = _parse_drawing([alphabet.name, character.name, drawing.name])
                if parsed is not None and drawing.is_file():
                    st = drawing.stat()
                    entries.append(
                        _Entry(split, *parsed, None, drawing.path, f"{st.st_size}:{st.st_mtime_ns}")
                    )
    return entries


def _fingerprint(entries: list[_Entry], image_size: int) -> str:
    """SHA-256 of what fixes the decoded pixels: file list and contents, size, decoder, Pillow version."""
    digest = hashlib.sha256(f"{_FORMAT}|{image_size}|lanczos-invert|Pillow {PIL.__version__}\n".encode())
    for e in entries:
        digest.update(f"{e.split}/{e.alphabet}/{e.character}/{e.filename} {e.token}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Decoding and caching


def _decode_png(data: bytes, image_size: int) -> np.ndarray:
    """PNG bytes -> ``uint8`` array ``(image_size, image_size)``, ink 255 and background 0."""
    with Image.open(io.BytesIO(data)) as im:
        gray = im.convert("L")  # '1' -> 0/255 with white (255) background
    if gray.size != (image_size, image_size):
        gray = gray.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(gray, dtype=np.uint8)


def _decode_entries(entries: list[_Entry], image_size: int, fingerprint: str) -> OmniglotImages:
    out = np.empty((len(entries), image_size, image_size), dtype=np.uint8)
    archives: dict[Path, zipfile.ZipFile] = {}
    try:
        for i, e in enumerate(tqdm(entries, desc="decoding Omniglot", unit="img", disable=None, leave=False)):
            try:
                if e.archive is None:
                    data = Path(e.member).read_bytes()
                else:
                    if e.archive not in archives:
                        archives[e.archive] = _open_zip(e.archive, fix=_REPLACE_HINT)
                    data = archives[e.archive].read(e.member)
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise DatasetError(f"cannot read {e.where} ({err}){_REPLACE_HINT}") from None
            try:
                out[i] = _decode_png(data, image_size)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                raise DatasetError(f"cannot decode {e.where} as an image ({err}){_REPLACE_HINT}") from None
    finally:
        for zf in archives.values():
            zf.close()
    return OmniglotImages(
        images=torch.from_numpy(out).unsqueeze(1),
        split=np.array([e.split for e in entries]),
        alphabet=np.array([e.alphabet for e in entries]),
        character=np.array([e.character for e in entries]),
        drawer=np.array([int(_DRAWING_RE.match(e.filename).group(2)) for e in entries], dtype=np.int64),
        char_id=np.array([int(_DRAWING_RE.match(e.filename).group(1)) for e in entries], dtype=np.int64),
        fingerprint=fingerprint,
    )


def _load_or_decode(source: Path, image_size: int, cache: Path) -> OmniglotImages:
    """Decoded images of ``source`` from the cache file if it matches, else decode and write that file."""
    entries = _list_entries(source)
    fingerprint = _fingerprint(entries, image_size)
    cache_path = cache / f"omniglot-{image_size}px-{fingerprint[:16]}.npz"
    if cache_path.is_file():
        try:
            data = OmniglotImages.load(cache_path)
            if data.fingerprint == fingerprint and data.image_size == image_size:
                return data
            reason = "it was made from other files"
        except DatasetError as e:
            reason = str(e)
        warnings.warn(
            f"ignoring cache file {cache_path} ({reason}); decoding again", RuntimeWarning, stacklevel=3
        )
    data = _decode_entries(entries, image_size, fingerprint)
    try:
        # Level 1: the cache is written once per source and size, and read often; deflate-1 is fast both ways.
        data.save(cache_path, compresslevel=1)
    except OSError as e:
        warnings.warn(
            f"could not write the Omniglot cache {cache_path} ({e}); images will be decoded again next time: "
            "pass cache_dir= or set FEWSHOT_CACHE to a writable folder",
            RuntimeWarning,
            stacklevel=3,
        )
    return data


def _load_embedded() -> OmniglotImages:
    if not EMBEDDED_PATH.is_file():
        raise FileNotFoundError(
            f"the embedded Omniglot copy {EMBEDDED_PATH} is missing (incomplete install): reinstall fewshot, "
            "or pass root= or download=True"
        )
    try:
        return OmniglotImages.load(EMBEDDED_PATH)
    except DatasetError as e:
        raise DatasetError(
            f"the embedded Omniglot copy is unreadable ({e}): reinstall fewshot, "
            "or pass root= or download=True"
        ) from None
