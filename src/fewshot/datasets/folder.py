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
import zipfile
import zlib
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


def read_table(
    path: str | Path, label: str = "label", allow_nonfinite: bool = False
) -> tuple[np.ndarray, list[str]]:
    """``(features (n, d) float32, label strings)`` from a CSV with a header row, or an NPZ (``x``/``y``).

    Args:
        path: a ``.csv`` (UTF-8, a header row naming the columns, one row per example) or an ``.npz`` written
            by ``numpy.savez(path, x=features, y=labels)`` with numeric ``x`` and numeric or string ``y``.
        label: the label column of a CSV (an NPZ's labels are ``y``, ``labels`` or an array of this name).
        allow_nonfinite: keep NaN and infinite feature values; by default the first one is refused with its
            file, row and column (they would turn every loss and probability they touch into NaN).

    Raises:
        FileNotFoundError: ``path`` does not exist. DatasetError: anything else that is wrong with the file,
        with the file (and row and column, or array) named.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise DatasetError(f"{path} is a folder; give a table file (.csv or .npz)")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a .csv or .npz table")
    if path.suffix.lower() == ".npz":
        x, y = _read_npz(path, label, allow_nonfinite)
    elif path.suffix.lower() == ".csv":
        header, body = read_csv(path)
        if label not in header:
            raise DatasetError(f"{path} has no {label!r} column (columns: {header}); name the label column")
        li = header.index(label)
        if not body:
            raise DatasetError(f"{path} has no rows; a table needs one row per example under its header")
        columns = [c for j, c in enumerate(header) if j != li]
        cells = [(line, [v for j, v in enumerate(r) if j != li]) for line, r in body]
        x = numeric_rows(path, columns, cells, f"every column but {label!r}", allow_nonfinite)
        y = [r[li] for _, r in body]
    else:
        raise DatasetError(f"{path}: a table is a .csv (with a header row) or a .npz with arrays x and y")
    if len(y) == 0:
        raise DatasetError(f"{path} has no rows; a table needs one row per example")
    return x, y


def read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and ``(line number, cells)`` of every non-empty row of a UTF-8 CSV; ragged rows refused."""
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, r) for r in reader if r]
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{path} is not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x}); save the table as a UTF-8 CSV"
        ) from e
    except csv.Error as e:
        raise DatasetError(
            f"{path} is not a readable CSV ({e}); save it as comma-separated UTF-8 text"
        ) from e
    if not rows:
        raise DatasetError(f"{path} is empty; a table needs a header row and one row per example")
    header = rows[0][1]
    ragged = next(((line, r) for line, r in rows[1:] if len(r) != len(header)), None)
    if ragged is not None:
        raise DatasetError(
            f"{path}: row {ragged[0]} has {len(ragged[1])} values, the header {len(header)}; give every row "
            "one value per column"
        )
    return header, rows[1:]


def numeric_rows(
    path: Path,
    columns: list[str],
    rows: list[tuple[int, list[str]]],
    which: str,
    allow_nonfinite: bool = False,
) -> np.ndarray:
    """``(n, len(columns))`` float32 from text cells; the first cell that is not a number (or, unless
    ``allow_nonfinite``, not finite in float32) is refused with its row (line number) and column."""
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below by name
            x = np.array([[float(v) for v in r] for _, r in rows], dtype=np.float32)
        x = x.reshape(len(rows), len(columns))
    except ValueError:  # find the cell, for the message
        line, j, v = next((line, j, v) for line, r in rows for j, v in enumerate(r) if not _is_float(v))
        raise DatasetError(
            f"{path}: row {line}, column {columns[j]!r} is {v!r}, not a number; {which} must be numeric"
        ) from None
    if not allow_nonfinite:
        bad = np.argwhere(~np.isfinite(x))
        if len(bad):
            i, j = bad[0]
            line, text = rows[i][0], rows[i][1][j]
            why = "" if text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity") else " in float32"
            raise DatasetError(
                f"{path}: row {line}, column {columns[j]!r} is {text!r}, not a finite number{why}"
                f"{_others(len(bad))}; fix or remove that row (or pass --allow-nonfinite)"
            )
    return x


def _others(n_bad: int) -> str:
    return f" ({n_bad - 1} other value(s) are not finite either)" if n_bad > 1 else ""


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_npz(path: Path, label: str, allow_nonfinite: bool) -> tuple[np.ndarray, list[str]]:
    """Features and label strings of an NPZ; object arrays (which need pickle) and corrupt files refused."""
    save = "save it with numpy.savez(path, x=features, y=labels)"
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{path} is not an .npz archive ({str(e).splitlines()[0]}); {save}") from e
    if not isinstance(z, np.lib.npyio.NpzFile):  # np.load of a .npy file gives its one array
        raise DatasetError(f"{path} holds one unnamed array (an .npy file), not arrays x and y; {save}")
    with z:
        keys = set(z.files)
        xk = next((k for k in ("x", "features") if k in keys), None)
        yk = next((k for k in ("y", label, "labels") if k in keys), None)
        if xk is None or yk is None:
            raise DatasetError(f"{path} needs arrays 'x' (features) and 'y' (labels); it has {sorted(keys)}")
        x, y = (_npz_array(z, path, k) for k in (xk, yk))
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: array {xk!r} holds {x.dtype} values; save the features as numbers")
    if y.ndim != 1:
        raise DatasetError(f"{path}: array {yk!r} has shape {y.shape}; save one label per row, a 1-D array")
    if x.ndim != 2 or len(x) != len(y):
        raise DatasetError(
            f"{path}: x must be (rows, features) with one label per row, got {x.shape}, {len(y)}"
        )
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below
        x32 = np.asarray(x, dtype=np.float32)
    bad = np.argwhere(~np.isfinite(x32))
    if len(bad) and not allow_nonfinite:
        i, j = (int(v) for v in bad[0])
        why = ", beyond float32's range" if np.isfinite(x[i, j]) else ""
        raise DatasetError(
            f"{path}: array {xk!r} row {i}, column {j} (counting from 0) is {x[i, j]}, not a finite number{why}"
            f"{_others(len(bad))}; fix or remove that row (or pass --allow-nonfinite)"
        )
    return x32, [str(v) for v in y.tolist()]


def _npz_array(z: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        return z[key]
    except ValueError as e:
        if "pickle" in str(e) or "Object arrays" in str(e):
            raise DatasetError(
                f"{path}: array {key!r} holds Python objects (dtype=object, e.g. rows of different lengths), "
                "which are not read (they need pickle); save numeric arrays (x float, y numbers or strings)"
            ) from e
        raise DatasetError(
            f"{path}: array {key!r} cannot be read ({e}); save it again with numpy.savez"
        ) from e
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DatasetError(f"{path}: array {key!r} is damaged ({e}); save the table again") from e


def table_dataset(
    path: str | Path,
    split: str = "all",
    label: str = "label",
    fractions: tuple[float, float] = (0.2, 0.2),
    seed: int = 0,
    allow_nonfinite: bool = False,
) -> FeatureDataset:
    """A table of feature vectors with a label column as a :class:`FeatureDataset`, split by classes.

    The whole table is read and checked whichever ``split`` is asked for (see :func:`read_table`, which also
    explains ``allow_nonfinite``), so a bad row in a test class is found before training."""
    x, y = read_table(path, label, allow_nonfinite)
    names = sorted(set(y))
    keep = [names[i] for i in split_classes(names, split, fractions, seed)]
    index = {name: i for i, name in enumerate(keep)}
    rows = [i for i, v in enumerate(y) if v in index]
    labels = torch.tensor([index[y[i]] for i in rows])
    return FeatureDataset(torch.from_numpy(x[rows]), labels, keep)
