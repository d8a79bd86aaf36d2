"""Your own data: a folder of images with one subfolder per class, or a table of feature vectors.

Both give a dataset with ``labels``, ``class_names`` and ``gather(indices)``, so the episode sampler, every
algorithm, ``evaluate`` and ``fewshot compare`` work on them unchanged. Classes are split into train / val /
test classes (few-shot learning is tested on classes never seen in training), either by folders named
``train``, ``val`` and ``test`` under the root, or by a seeded random split of the classes by fractions.

Images are decoded with Pillow, converted to grey (``channels=1``) or RGB (``channels=3``) and resized to
``image_size`` x ``image_size`` (Lanczos). ``invert=True`` stores ``255 - pixel``, which turns dark ink on white
paper into the bright-on-black convention of the embedded Omniglot.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fewshot.datasets.base import ClassDataset
from fewshot.datasets.storage import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")


def load_image(path: Path, image_size: int, channels: int, invert: bool = False) -> np.ndarray:
    """One image as ``(channels, image_size, image_size)`` uint8; a clear error if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.LANCZOS)
            a = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"{path} is not a readable image ({e}); remove it or replace it") from e
    a = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return 255 - a if invert else a


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
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} does not exist or is not a folder; give a folder with one subfolder per class"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"{root} has no class subfolders; put each class's images in a folder of its own")
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
    folders = class_folders(root)
    if {p.name for p in folders} >= {"train", "test"} and split != "all":
        folders = class_folders(root / split)
    else:
        folders = [folders[i] for i in split_classes([p.name for p in folders], split, fractions, seed)]
    images, labels, names = [], [], []
    for label, folder in enumerate(folders):
        files = image_files(folder)
        if not files:
            raise DatasetError(f"class folder {folder} has no images; remove it or add images")
        images += [load_image(f, image_size, channels, invert) for f in files]
        labels += [label] * len(files)
        names.append(folder.name)
    return ClassDataset(torch.from_numpy(np.stack(images)), torch.tensor(labels), names)


class FeatureDataset:
    """Labelled feature vectors (rows of a table): the same interface as :class:`ClassDataset`.

    Attributes:
        features: ``(n, d)`` float32. labels: ``(n,)`` class ids ``0..num_classes-1``. class_names: one per class.
    """

    def __init__(self, features: Tensor, labels: Tensor, class_names: Sequence[str]) -> None:
        if features.dim() != 2 or features.shape[0] != labels.shape[0]:
            raise ValueError(
                f"features must be (n, d) with n = {labels.shape[0]} labels, got {tuple(features.shape)}"
            )
        self.features, self.labels, self.class_names = features.float(), labels.long(), list(class_names)

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.features[i], self.labels[i]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int]:
        """``(d,)``: the shape of one example (named as for images so code can ask either)."""
        return (self.features.shape[1],)

    def gather(self, idx: Tensor) -> Tensor:
        return self.features[idx]

    def subset(self, keep: Tensor) -> FeatureDataset:
        return FeatureDataset(self.features[keep], self.labels[keep], self.class_names)

    def __repr__(self) -> str:
        return f"FeatureDataset({len(self)} rows of {self.features.shape[1]} features, {self.num_classes} classes)"


def read_table(path: str | Path, label: str = "label") -> tuple[np.ndarray, list[str]]:
    """``(features (n, d) float32, label strings)`` from a CSV with a header row, or an NPZ (``x``/``y``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a .csv or .npz table")
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            xk = next((k for k in ("x", "features") if k in keys), None)
            yk = next((k for k in ("y", label, "labels") if k in keys), None)
            if xk is None or yk is None:
                raise DatasetError(
                    f"{path} needs arrays 'x' (features) and 'y' (labels); it has {sorted(keys)}"
                )
            x, y = np.asarray(z[xk], dtype=np.float32), [str(v) for v in np.asarray(z[yk]).tolist()]
        if x.ndim != 2 or len(x) != len(y):
            raise DatasetError(
                f"{path}: x must be (rows, features) with one label per row, got {x.shape}, {len(y)}"
            )
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            raise DatasetError(f"{path} is empty; a table needs a header row and one row per example")
        header, body = rows[0], [r for r in rows[1:] if r]
        if label not in header:
            raise DatasetError(f"{path} has no {label!r} column (columns: {header}); name the label column")
        li = header.index(label)
        if not body:
            raise DatasetError(f"{path} has no rows; a table needs one row per example under its header")
        ragged = next((k for k, r in enumerate(body, start=2) if len(r) != len(header)), None)
        if ragged is not None:
            raise DatasetError(
                f"{path}: row {ragged} has {len(body[ragged - 2])} values, the header {len(header)}"
            )
        y = [r[li] for r in body]
        try:
            x = np.array([[float(v) for j, v in enumerate(r) if j != li] for r in body], dtype=np.float32)
        except ValueError as e:
            raise DatasetError(f"{path}: every column but {label!r} must be numeric ({e})") from e
        if x.ndim != 2 or x.shape[1] != len(header) - 1:
            raise DatasetError(
                f"{path}: rows have different numbers of values; every row needs {len(header)}"
            )
    else:
        raise DatasetError(f"{path}: a table is a .csv (with a header row) or a .npz with arrays x and y")
    if len(y) == 0:
        raise DatasetError(f"{path} has no rows; a table needs one row per example")
    return x, y


def table_dataset(
    path: str | Path,
    split: str = "all",
    label: str = "label",
    fractions: tuple[float, float] = (0.2, 0.2),
    seed: int = 0,
) -> FeatureDataset:
    """A table of feature vectors with a label column as a :class:`FeatureDataset`, split by classes."""
    x, y = read_table(path, label)
    names = sorted(set(y))
    keep = [names[i] for i in split_classes(names, split, fractions, seed)]
    index = {name: i for i, name in enumerate(keep)}
    rows = [i for i, v in enumerate(y) if v in index]
    labels = torch.tensor([index[y[i]] for i in rows])
    return FeatureDataset(torch.from_numpy(x[rows]), labels, keep)
