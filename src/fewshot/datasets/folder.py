"""Your own data: a folder of images with one subfolder per class (tables of feature vectors: :mod:`.table`).

Both give a dataset with ``labels``, ``class_names`` and ``gather(indices)``, so the episode sampler, every
algorithm, ``evaluate`` and ``fewshot compare`` work on them unchanged. Classes are split into train / val /
test classes (few-shot learning is tested on classes never seen in training), either by folders named
``train``, ``val`` and ``test`` under the root, or by a seeded random split of the classes by fractions.

Images are decoded with Pillow, converted to grey (``channels=1``) or RGB (``channels=3``) and resized to
``image_size`` x ``image_size`` (Lanczos). ``invert=True`` stores ``255 - pixel``, which turns dark ink on white
paper into the bright-on-black convention of the embedded Omniglot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fewshot.datasets.base import ClassDataset
from fewshot.datasets.storage import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")


def load_image(path: Path, image_size: int, channels: int, invert: bool = False) -> np.ndarray:
    """One image as ``(channels, image_size, image_size)`` uint8; a clear error if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.LANCZOS)
            a = np.asarray(im, dtype=np.uint8)
    except IMAGE_ERRORS as e:
        raise _unreadable(path, e) from e
    a = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return 255 - a if invert else a


def _image_errors() -> tuple[type[Exception], ...]:
    from PIL import Image, UnidentifiedImageError

    # SyntaxError: Pillow's plugins raise it for a damaged file (e.g. a PNG chunk cut short)
    return UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError


IMAGE_ERRORS = _image_errors()  # what opening or decoding a bad image file raises


def _unreadable(path: Path, e: BaseException) -> DatasetError:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return DatasetError(f"{path} is not a readable image ({reason}); remove it or replace it")


def image_files(folder: Path) -> list[Path]:
    """The images of one class folder, sorted; any other visible file is an error that names it."""
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(
                f"{p} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))}); a class folder holds only images"
            )
        files.append(p)
    return files


def class_folders(root: Path) -> list[Path]:
    """The class subfolders of ``root``, sorted (hidden ones skipped); an error that says what ``root`` lacks."""
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist; give a folder with one subfolder per class")
    if not root.is_dir():
        raise DatasetError(
            f"{root} is a file, not a folder; give a folder with one subfolder of images per class"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        holds = f"it holds {loose} image file(s) directly" if loose else "it is empty"
        raise DatasetError(
            f"{root} has no class folders: put each class's images in its own subfolder, "
            f"{root / '<class>' / '<image>'} ({holds})"
        )
    return folders


def split_classes(names: Sequence[str], split: str, fractions: tuple[float, float], seed: int) -> list[int]:
    """Indices of the classes in ``split`` under a seeded random split (val and test ``fractions``, rest train).

    Every split gets at least one class when there are at least three classes; ``"all"`` keeps every class.
    """
    if split == "all":
        return list(range(len(names)))
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {[*SPLITS, 'all']}")
    n = len(names)
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = (
        max(1, round(f * n)) if f > 0 else 0 for f in fractions
    )  # a positive share: 1 class or more
    if n_val + n_test >= n:
        raise DatasetError(
            f"{n} classes cannot be split into train / val / test classes with fractions {fractions}; give more "
            "classes (at least 3) or use train/val/test folders"
        )
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return sorted(int(i) for i in parts[split])


def image_folder(
    root: str | Path,
    split: str = "all",
    image_size: int = 28,
    channels: int = 1,
    invert: bool = False,
    fractions: tuple[float, float] = (0.2, 0.2),
    seed: int = 0,
) -> ClassDataset:
    """The images of ``root`` as a :class:`ClassDataset`.

    Args:
        root: a folder with one subfolder per class (``root/<class>/<image>``), or with ``train``, ``val`` and
            ``test`` folders that each hold class subfolders (then ``split`` picks one of them).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        image_size, channels, invert: how images are converted (see the module doc).
        fractions: (val, test) fractions of the classes for the random split; the rest are training classes.
        seed: the class split's seed.

    Raises:
        FileNotFoundError: ``root`` does not exist. DatasetError: no classes, an empty class folder, a file
        that is not a readable image.
    """
    root = Path(root).expanduser()
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    images, labels, names = [], [], []
    for label, (folder, files) in enumerate(_split_files(root, split, fractions, seed)):
        images += [load_image(f, image_size, channels, invert) for f in files]
        labels += [label] * len(files)
        names.append(folder.name)
    return ClassDataset(torch.from_numpy(np.stack(images)), torch.tensor(labels), names)


def _split_files(
    root: Path, split: str, fractions: tuple[float, float], seed: int
) -> list[tuple[Path, list[Path]]]:
    """``(class folder, its image files)`` of every class in ``split``, in label order (see :func:`image_folder`)."""
    folders = class_folders(root)
    if {p.name for p in folders} >= {"train", "test"} and split != "all":
        if not (root / split).is_dir():
            raise DatasetError(
                f"{root} has train and test folders but no {split} folder; add {root / split} with class subfolders"
            )
        folders = class_folders(root / split)
    else:
        folders = [folders[i] for i in split_classes([p.name for p in folders], split, fractions, seed)]
    out = []
    for folder in folders:
        files = image_files(folder)
        if not files:
            raise DatasetError(f"class folder {folder} has no images; remove it or add images")
        out.append((folder, files))
    return out


def check_files(
    root: str | Path,
    splits: Sequence[str] = SPLITS,
    fractions: tuple[float, float] = (0.2, 0.2),
    seed: int = 0,
    decode: bool = True,
) -> None:
    """Checks, before any training, that every split of an image folder will load: the layout, and every file.

    :func:`image_folder` reads only the classes of the split it is asked for, so a bad file in a test class
    would otherwise surface only when the test split is loaded, after training. This walks every split as
    :func:`image_folder` would and opens every image, without converting or resizing it.

    Args:
        root, fractions, seed: as for :func:`image_folder`.
        splits: the splits that will be loaded (e.g. the run's train, val and test splits).
        decode: decode every image fully (finds every file the loader would refuse, a truncated JPEG too), or,
            if ``False``, only read the headers and verify what Pillow can check without decoding (PNG
            checksums; a truncated JPEG, GIF or BMP passes). Measured on 2 cores: 1,600 105x105 PNGs take 0.3 s
            either way; 1,600 500x375 JPEGs take 2.5 s decoded, 0.2 s with ``decode=False``.

    Raises:
        FileNotFoundError, DatasetError: as :func:`image_folder`, naming the first bad file and how many others
            are bad.

    Example:
        >>> check_files("my_classes", ("train", "val", "test"), (0.2, 0.2), seed=0)
    """
    from PIL import Image

    root = Path(root).expanduser()
    files = sorted(
        {f for split in splits for _, fs in _split_files(root, split, fractions, seed) for f in fs}
    )
    bad: list[DatasetError] = []
    for f in files:
        try:
            with Image.open(f) as im:  # reads the header: a file that is not an image fails here
                if decode:
                    im.load()
                else:
                    im.verify()
        except IMAGE_ERRORS as e:
            bad.append(_unreadable(f, e))
    if bad:
        more = f" ({len(bad) - 1} other file(s) are unreadable too)" if len(bad) > 1 else ""
        raise DatasetError(str(bad[0]) + more)
