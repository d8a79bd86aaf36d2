"""Your own data as a table of feature vectors: a CSV with a label column, or an NPZ with arrays ``x`` and ``y``.

Like an image folder (:mod:`fewshot.datasets.folder`), a table gives a dataset with ``labels``, ``class_names``
and ``gather(indices)``, and its classes are split into train / val / test classes by a seeded split of the
classes. Every value is checked when the table is read: a value that is not a number, or (unless asked for) not
finite, is refused with its file, row and column.
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

from fewshot.datasets.folder import split_classes
from fewshot.datasets.storage import DatasetError


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
        line, j, v = next((line, j, v) for line, r in rows for j, v in enumerate(r) if not is_number(v))
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


def is_number(text: str) -> bool:
    """Whether ``text`` reads as a float (``nan`` and ``inf`` included: finiteness is checked apart)."""
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
