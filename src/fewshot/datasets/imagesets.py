"""The standard few-shot image benchmarks, read from a copy you already have.

:func:`load_imageset` detects the layout under ``root`` (the first match per split, in the order listed):

* ``miniimagenet`` (Vinyals et al. 2016; Ravi & Larochelle 2017 split, 64 / 16 / 20 classes x 600 images):
  ``mini-imagenet-cache-<split>.pkl`` (``'image_data'`` uint8 (N, 84, 84, 3), ``'class_dict'`` wnid -> rows;
  learn2learn names the val file ``-validation``), MetaOptNet's / Gidaris et al.'s
  ``miniImageNet_category_split_{train_phase_train,val,test}.pickle`` (``'data'``, ``'labels'``,
  ``'catname2label'``), ``images/*.jpg`` with ``{train,val,test}.csv`` (``filename,label``; the Ravi CSVs ship
  with fewshot and are used when ``root`` has none), or ``{train,val,test}/<wnid>/*.jpg`` class folders.
* ``tieredimagenet`` (Ren et al. 2018; 351 / 97 / 160 classes), in ``root`` or ``root/tiered-imagenet``:
  ``<split>_images_png.pkl`` (a list of PNG-encoded images) + ``<split>_labels.pkl`` as published by
  renmengye/few-shot-ssl-public, or ``<split>_images.npz`` (``'images'`` uint8 (N, 84, 84, 3)) +
  ``<split>_labels.pkl`` as used by MetaOptNet. The npz is what that repository's ``decompress`` writes with
  OpenCV, blue-green-red; it is turned into RGB so that both layouts give the same pixels.
* ``cifarfs`` (Bertinetto et al. 2019; 64 / 16 / 20 CIFAR-100 classes, lists shipped) and ``fc100`` (Oreshkin
  et al. 2018; 12 / 4 / 4 CIFAR-100 superclasses = 60 / 20 / 20 classes, shipped): CIFAR-100's python version,
  ``cifar-100-python/`` (or its contents in ``root``) or ``cifar-100-python.tar.gz`` read in place, all 600
  images of a class (500 train, then 100 test); or MetaOptNet's ``CIFAR_FS_<split>.pickle`` /
  ``FC100_<split>.pickle`` (``'data'`` uint8 (N, 32, 32, 3), ``'labels'``; class names are then the label ids).
* ``cub`` (Wah et al. 2011; 200 bird species): ``CUB_200_2011/images/<NNN.Name>/*.jpg`` (``root`` may be the
  ``CUB_200_2011`` folder or its parent), split 100 / 50 / 50 by Chen et al. 2019's rule
  (wyharveychen/CloserLookFewShot ``filelists/CUB/write_CUB_filelist.py``: over the sorted class folders,
  index % 2 == 0 -> train, % 4 == 1 -> val, % 4 == 3 -> test; the index used here is ``NNN - 1``, the same
  for the 200 official folders, and missing folders cannot shift it).

Classes are in the order of the split list (the shipped file, or ``classes=``); where the split comes from the
data files, in label-id order. Every pickle is read with :mod:`fewshot.datasets.safepickle` (nothing in it can
run), and every split is decoded once per size into the cache (:mod:`fewshot.datasets.imagecache`).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import re
import tarfile
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fewshot.datasets.augment import augment
from fewshot.datasets.base import ClassDataset
from fewshot.datasets.folder import image_files
from fewshot.datasets.imagecache import (
    Built,
    Plan,
    load_or_build,
    npz_array,
    stat_id,
    write_array,
    write_encoded,
)
from fewshot.datasets.safepickle import load_pickle
from fewshot.datasets.storage import DatasetError, resolve_cache_dir

__all__ = ["IMAGESETS", "SPLITS", "ImagesetInfo", "augment", "load_imageset"]

SPLITS = ("train", "val", "test")
SPLITS_DIR = Path(__file__).resolve().parent.parent / "data" / "splits"


class ImagesetInfo(NamedTuple):
    """Default image side in pixels, and where the data comes from and which layouts are read."""

    image_size: int
    description: str


IMAGESETS: dict[str, ImagesetInfo] = {
    "miniimagenet": ImagesetInfo(84, "mini-ImageNet (Vinyals et al. 2016, Ravi-Larochelle split 64/16/20): "
        "images/*.jpg + split CSVs (shipped), train|val|test/<wnid>/ folders, mini-imagenet-cache-<split>.pkl "
        "or MetaOptNet's miniImageNet_category_split_*.pickle"),
    "tieredimagenet": ImagesetInfo(84, "tieredImageNet (Ren et al. 2018, 351/97/160 classes): "
        "<split>_images_png.pkl + <split>_labels.pkl (renmengye/few-shot-ssl-public) or <split>_images.npz + "
        "<split>_labels.pkl (MetaOptNet)"),
    "cifarfs": ImagesetInfo(32, "CIFAR-FS (Bertinetto et al. 2019, 64/16/20 CIFAR-100 classes, lists shipped): "
        "cifar-100-python/ or cifar-100-python.tar.gz (cs.toronto.edu/~kriz/cifar.html), or MetaOptNet's "
        "CIFAR_FS_<split>.pickle"),
    "fc100": ImagesetInfo(32, "FC100 (Oreshkin et al. 2018, 12/4/4 CIFAR-100 superclasses = 60/20/20 classes, "
        "shipped): cifar-100-python/ or cifar-100-python.tar.gz, or MetaOptNet's FC100_<split>.pickle"),
    "cub": ImagesetInfo(84, "CUB-200-2011 (Wah et al. 2011, 100/50/50 species by Chen et al. 2019's rule): "
        "CUB_200_2011/images/<NNN.Name>/*.jpg"),
}  # fmt: skip
"""Name -> default image size and a one-line description (for the CLI and README)."""

_CACHE_NAME = "imagesets"
_FIX = "use a complete copy of the data, or pass classes={split: [...]} with the classes it has"


def load_imageset(
    name: str,
    root: str | Path,
    split: str,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    classes: Mapping[str, Sequence[str]] | None = None,
) -> ClassDataset:
    """One split of a few-shot image benchmark as a :class:`ClassDataset` of ``uint8 (n, 3, s, s)`` RGB images.

    Args:
        name: one of :data:`IMAGESETS` (``miniimagenet``, ``tieredimagenet``, ``cifarfs``, ``fc100``, ``cub``).
        root: the folder holding the data in one of the layouts of the module doc.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side ``s`` of the square images; ``None`` -> the benchmark's usual size (84, or 32 for
            CIFAR-FS and FC100).
        cache_dir: where decoded splits are kept; default ``$FEWSHOT_CACHE/imagesets`` or
            ``~/.cache/fewshot/imagesets``.
        progress: show a progress bar (on a terminal) while decoding.
        classes: optional split -> class names, replacing the standard list of that split (e.g. to use
            another published split, or a copy with fewer classes). Names are wnids (mini-ImageNet), CIFAR-100
            fine labels, CUB folder names (``"001.Black_footed_Albatross"``), or the class names the data
            files give (tieredImageNet, MetaOptNet pickles).

    Returns:
        The split's images grouped by class, labels ``0..k-1`` in class order, ``class_names``. The images are
        a copy-on-write memory map of the cache file: nothing is read from disk until it is used.

    Raises:
        ValueError: unknown name or split, bad ``image_size`` or ``classes``.
        FileNotFoundError: ``root`` does not exist.
        DatasetError: no known layout under ``root``, a class of the split is missing, a file is unreadable,
            truncated, of the wrong shape, or a pickle that asks to run code; nothing is left in the cache.

    Example:
        >>> train = load_imageset("miniimagenet", "~/data/mini-imagenet", "train")
        >>> train.images.shape
        torch.Size([38400, 3, 84, 84])
    """
    if name not in IMAGESETS:
        raise ValueError(f"unknown image benchmark {name!r}: choose one of {', '.join(IMAGESETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    size = IMAGESETS[name].image_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    wanted = _wanted(classes, split)
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"{name} root {root} does not exist: give the folder that holds the {name} files"
        )
    if not root.is_dir():
        raise DatasetError(f"{name} root {root} is a file: give the folder that holds it")
    plan = _PLANNERS[name](root, split, int(size), wanted)
    plan.key.append(f"classes {wanted!r}")
    return load_or_build(name, split, int(size), plan, resolve_cache_dir(cache_dir, _CACHE_NAME), progress)


def _wanted(classes: Mapping[str, Sequence[str]] | None, split: str) -> list[str] | None:
    if classes is None:
        return None
    if not isinstance(classes, Mapping) or not set(classes) <= set(SPLITS):
        raise ValueError(f"classes must map some of {', '.join(SPLITS)} to class names, got {classes!r}")
    if classes.get(split) is None:
        return None
    names = classes[split]
    if isinstance(names, str) or not all(isinstance(c, str) for c in names) or not names:
        raise ValueError(f"classes[{split!r}] must be a non-empty list of class names, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes[{split!r}] names a class twice")
    return list(names)


def _pick(available: Collection[str], wanted: list[str] | None, default: Sequence[str], where: object,
          name: str, split: str) -> list[str]:  # fmt: skip
    """The split's class names (``wanted`` or ``default``); an error naming one that ``available`` lacks."""
    names = list(default) if wanted is None else wanted
    missing = [c for c in names if c not in available]
    if missing:
        raise DatasetError(
            f"{where} lacks {len(missing)} of the {len(names)} {name} {split} classes "
            f"(e.g. {missing[0]!r}): {_FIX}"
        )
    return names


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"the split file {path} is missing (incomplete install): reinstall fewshot")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _get(data: Any, key: str, where: object, what: str) -> Any:
    """``data[key]`` of an unpickled dict, accepting text or bytes keys; an error naming what is there."""
    if not isinstance(data, dict):
        raise DatasetError(f"{where} holds a {type(data).__name__}, not the dict of a {what} file")
    for k in (key, key.encode()):
        if k in data:
            return data[k]
    keys = ", ".join(repr(k) for k in list(data)[:8])
    raise DatasetError(f"{where} has no {key!r} entry (it has {keys}): it is not a {what} file")


def _text(value: Any) -> str:
    """A name from a pickle as ``str`` (bytes, as a Python 3 re-pickling may hold, decoded as latin-1)."""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _check_images(images: Any, native: int, where: object, key: str) -> np.ndarray:
    shape = (native, native, 3)
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[1:] != shape
    ):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DatasetError(
            f"{where}: {key!r} is {got}, expected uint8 (n, {native}, {native}, 3) as in the published files; "
            "this is not such a file, or it is damaged"
        )
    return images


def _select_rows(path: Path, n_images: int, labels: np.ndarray, id_names: Mapping[int, str],
                 wanted: list[str] | None, name: str, split: str,
                 ) -> tuple[list[str], list[np.ndarray]]:  # fmt: skip
    """Class names (``wanted``, else every labelled class in id order) and the rows of each; negative labels
    mark images of no class."""
    if len(labels) != n_images:
        raise DatasetError(f"{path}: {n_images} images but {len(labels)} labels; the files do not match")
    ids = [int(i) for i in np.unique(labels[labels >= 0])]
    unknown = [i for i in ids if i not in id_names]
    if unknown:
        raise DatasetError(f"{path}: label {unknown[0]} has no class name; the files do not match")
    named = [id_names[i] for i in ids]
    if len(set(named)) != len(named):  # ImageNet has a few homonyms ("crane"): keep them apart
        named = [f"{n}#{i}" if named.count(n) > 1 else n for n, i in zip(named, ids, strict=True)]
    id_of = dict(zip(named, ids, strict=True))
    names = _pick(id_of, wanted, named, path, name, split)
    return names, [np.flatnonzero(labels == id_of[c]) for c in names]


def _labelled_plan(path: Path, layout: str, name: str, split: str, size: int, wanted: list[str] | None,
                   parse: Callable[[Path], tuple[np.ndarray, np.ndarray, dict[int, str], bool]],
                   extra: Sequence[Path] = ()) -> Plan:  # fmt: skip
    """A split held as one image array plus integer labels; ``parse(path)`` -> (images, labels, names, bgr)."""

    def build() -> Built:
        images, labels, id_names, bgr = parse(path)
        names, rows = _select_rows(path, len(images), labels, id_names, wanted, name, split)
        write = write_array(images, np.concatenate(rows), size, channels_last=True, bgr=bgr)
        return Built(names, [len(r) for r in rows], write)

    return Plan(layout, [stat_id(p) for p in (path, *extra)], build)


def _int_labels(values: Any, where: object) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"{where}: labels must be a list of integers, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# mini-ImageNet


def _mini_plan(root: Path, split: str, size: int, wanted: list[str] | None) -> Plan:
    name = "miniimagenet"
    # learn2learn names the validation file mini-imagenet-cache-validation.pkl, other copies -val.pkl
    caches = [f"mini-imagenet-cache-{split}.pkl"] + ["mini-imagenet-cache-validation.pkl"] * (split == "val")
    for fname in caches:
        if (root / fname).is_file():
            return _labelled_plan(root / fname, "cache-pkl", name, split, size, wanted, _parse_mini_cache)
    phase = {"train": "train_phase_train", "val": "val", "test": "test"}[split]
    gidaris = root / f"miniImageNet_category_split_{phase}.pickle"
    if gidaris.is_file():
        return _labelled_plan(gidaris, "metaoptnet-pkl", name, split, size, wanted, _parse_catname2label)
    if (root / "images").is_dir():
        return _mini_csv_plan(root, split, size, wanted)
    if (root / split).is_dir():
        folders = {p.name: p for p in (root / split).iterdir() if p.is_dir() and not p.name.startswith(".")}
        default = list(
            dict.fromkeys(label for _, label in _read_csv(SPLITS_DIR / "miniimagenet" / f"{split}.csv"))
        )
        return _folder_plan(
            folders, _pick(folders, wanted, default, root / split, name, split), size, "class-folders"
        )
    raise DatasetError(
        f"no mini-ImageNet data for split {split!r} under {root}: looked for mini-imagenet-cache-{split}.pkl, "
        f"{gidaris.name}, images/ (with {split}.csv, or the shipped Ravi CSVs) and {split}/<wnid>/"
    )


def _parse_mini_cache(path: Path) -> tuple[np.ndarray, np.ndarray, dict[int, str], bool]:
    data = load_pickle(path)
    images = _check_images(_get(data, "image_data", path, "mini-ImageNet cache"), 84, path, "image_data")
    class_dict = _get(data, "class_dict", path, "mini-ImageNet cache")
    if not isinstance(class_dict, dict):
        raise DatasetError(
            f"{path}: 'class_dict' is a {type(class_dict).__name__}, not a dict of wnid -> rows"
        )
    # -1: an image of no class (none in the published files)
    labels = np.full(len(images), -1, dtype=np.int64)
    names = sorted(class_dict, key=_text)  # label ids follow the sorted wnids
    for i, wnid in enumerate(names):
        rows = _int_labels(class_dict[wnid], path)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(images)):
            raise DatasetError(
                f"{path}: class_dict[{wnid!r}] points past the {len(images)} images; it is damaged"
            )
        labels[rows] = i
    return images, labels, {i: _text(w) for i, w in enumerate(names)}, False


def _parse_catname2label(path: Path) -> tuple[np.ndarray, np.ndarray, dict[int, str], bool]:
    data = load_pickle(path)
    images = _check_images(_get(data, "data", path, "MetaOptNet mini-ImageNet"), 84, path, "data")
    labels = _int_labels(_get(data, "labels", path, "MetaOptNet mini-ImageNet"), path)
    catname2label = _get(data, "catname2label", path, "MetaOptNet mini-ImageNet")
    return images, labels, {int(v): _text(k) for k, v in catname2label.items()}, False


def _read_csv(path: Path) -> list[tuple[str, str]]:
    """``(filename, label)`` rows of a Ravi-style split CSV."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DatasetError(
            f"{path} does not start with the header 'filename,label' of a mini-ImageNet split CSV"
        )
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[0] or not row[1]:
            raise DatasetError(f"{path}:{n}: expected 'filename,label', got {','.join(row)!r}")
        out.append((row[0], row[1]))
    return out


def _mini_csv_plan(root: Path, split: str, size: int, wanted: list[str] | None) -> Plan:
    csvs = {s: root / f"{s}.csv" if (root / f"{s}.csv").is_file() else SPLITS_DIR / "miniimagenet" / f"{s}.csv"
            for s in SPLITS}  # fmt: skip
    files_of: dict[str, list[str]] = {}
    for s in SPLITS if wanted is not None else (split,):  # classes= may take classes from any split's CSV
        for filename, label in _read_csv(csvs[s]):
            files_of.setdefault(label, []).append(filename)
    default = list(dict.fromkeys(label for _, label in _read_csv(csvs[split])))
    names = _pick(files_of, wanted, default, csvs[split], "miniimagenet", split)
    files = [root / "images" / f for c in names for f in files_of[c]]
    identity = [hashlib.sha256(p.read_bytes()).hexdigest() for p in csvs.values()]
    for path in files:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DatasetError(f"{path} (listed in {csvs[split].name}) is missing: {_FIX}") from None
        identity.append(f"{path.name} {st.st_size} {st.st_mtime_ns}")
    identity.append(str((root / "images").resolve()))
    counts = [len(files_of[c]) for c in names]
    return Plan(
        "images-csv",
        identity,
        lambda: Built(names, counts, write_encoded([(p, str(p)) for p in files], size)),
    )


def _folder_plan(folders: Mapping[str, Path], names: list[str], size: int, layout: str) -> Plan:
    """Classes as folders of image files (sorted), one folder per name."""
    files = []
    for c in names:
        found = image_files(folders[c])  # refuses anything that is not an image, naming it
        if not found:
            raise DatasetError(f"class folder {folders[c]} has no images; remove it or add images")
        files.append(found)
    identity = [stat_id(p) for fs in files for p in fs]
    sources = [(p, str(p)) for fs in files for p in fs]
    return Plan(
        layout, identity, lambda: Built(names, [len(fs) for fs in files], write_encoded(sources, size))
    )


# ----------------------------------------------------------------------------------------------------------
# tieredImageNet


def _tiered_plan(root: Path, split: str, size: int, wanted: list[str] | None) -> Plan:
    for folder in (root, root / "tiered-imagenet"):
        labels = folder / f"{split}_labels.pkl"
        png, npz = folder / f"{split}_images_png.pkl", folder / f"{split}_images.npz"
        if labels.is_file() and png.is_file():
            return _tiered_png_plan(png, labels, split, size, wanted)
        if labels.is_file() and npz.is_file():
            parse = functools.partial(_parse_tiered_npz, labels_path=labels)
            return _labelled_plan(npz, "npz", "tieredimagenet", split, size, wanted, parse, extra=(labels,))
    raise DatasetError(
        f"no tieredImageNet data for split {split!r} in {root} or {root / 'tiered-imagenet'}: looked for "
        f"{split}_labels.pkl with {split}_images_png.pkl or {split}_images.npz"
    )


def _parse_tiered_npz(npz: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray, dict[int, str], bool]:
    images = _check_images(npz_array(npz, "images"), 84, npz, "images")
    return images, *_tiered_labels(labels_path), True  # True: OpenCV's blue-green-red order


def _tiered_labels(path: Path) -> tuple[np.ndarray, dict[int, str]]:
    """Labels and id -> name from renmengye's (``label_specific[_str]``) or MetaOptNet's (``labels``) file."""
    data = load_pickle(path)
    if isinstance(data, dict) and ("label_specific" in data or b"label_specific" in data):
        labels = _int_labels(_get(data, "label_specific", path, "tieredImageNet labels"), path)
        strings = _get(data, "label_specific_str", path, "tieredImageNet labels")
        names = {i: _text(s) for i, s in enumerate(strings)}
        return labels, names
    labels = _int_labels(_get(data, "labels", path, "tieredImageNet labels"), path)
    return labels, {int(i): str(int(i)) for i in np.unique(labels)}


def _tiered_png_plan(png: Path, labels_path: Path, split: str, size: int, wanted: list[str] | None) -> Plan:
    def build() -> Built:
        blobs = load_pickle(png)
        if not isinstance(blobs, list):
            raise DatasetError(f"{png} holds a {type(blobs).__name__}, not the list of PNG images it should")
        labels, id_names = _tiered_labels(labels_path)
        names, rows = _select_rows(png, len(blobs), labels, id_names, wanted, "tieredimagenet", split)
        sources = []
        for i in np.concatenate(rows):
            blob = blobs[i]
            blob = blob.encode("latin-1") if isinstance(blob, str) else blob  # a Python 2 str read as latin-1
            sources.append((blob, f"{png} image {i}"))
        return Built(names, [len(r) for r in rows], write_encoded(sources, size))

    return Plan("png-pkl", [stat_id(png), stat_id(labels_path)], build)


# ----------------------------------------------------------------------------------------------------------
# CIFAR-FS and FC100 (from CIFAR-100)


def _cifar_plan(name: str, root: Path, split: str, size: int, wanted: list[str] | None) -> Plan:
    parts = ("meta", "train", "test")
    for folder in (root, root / "cifar-100-python"):
        if all((folder / p).is_file() for p in parts):
            files = [folder / p for p in parts]
            read = functools.partial(_read_pickles, files)
            return _cifar100_plan(name, split, size, wanted, read, folder, "cifar-100-python", files)
    archive = root / "cifar-100-python.tar.gz"
    if archive.is_file():
        read = functools.partial(_read_tar, archive, parts)
        return _cifar100_plan(name, split, size, wanted, read, archive, "cifar-100-python-tar", [archive])
    pickle_name = f"{'CIFAR_FS' if name == 'cifarfs' else 'FC100'}_{split}.pickle"
    if (root / pickle_name).is_file():
        return _labelled_plan(
            root / pickle_name, "metaoptnet-pkl", name, split, size, wanted, _parse_metaoptnet_cifar
        )
    raise DatasetError(
        f"no CIFAR-100 data for {name} under {root}: looked for cifar-100-python/ (or its train, test and meta "
        f"files), cifar-100-python.tar.gz and {pickle_name}"
    )


def _read_pickles(files: Sequence[Path]) -> dict[str, Any]:
    return {p.name: load_pickle(p) for p in files}


def _read_tar(archive: Path, parts: Sequence[str]) -> dict[str, Any]:
    return {k: load_pickle(v, f"{archive}:{k}") for k, v in _tar_members(archive, parts).items()}


def _parse_metaoptnet_cifar(path: Path) -> tuple[np.ndarray, np.ndarray, dict[int, str], bool]:
    data = load_pickle(path)
    images = _check_images(_get(data, "data", path, "MetaOptNet CIFAR"), 32, path, "data")
    labels = _int_labels(_get(data, "labels", path, "MetaOptNet CIFAR"), path)
    return images, labels, {int(i): str(int(i)) for i in np.unique(labels)}, False


def _tar_members(archive: Path, parts: Sequence[str]) -> dict[str, bytes]:
    """The ``cifar-100-python/<part>`` members of the official archive, read in place."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tf:
            for member in tf:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in parts and base not in found:
                    found[base] = tf.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DatasetError(
            f"{archive} is not a readable tar.gz: it is truncated or corrupt ({type(e).__name__}: {e}); "
            "download it again"
        ) from None
    missing = [p for p in parts if p not in found]
    if missing:
        raise DatasetError(
            f"{archive} lacks cifar-100-python/{missing[0]}: it is not CIFAR-100's python archive"
        )
    return found


def _cifar100_plan(name: str, split: str, size: int, wanted: list[str] | None, read: Callable[[], dict],
                   where: Path, layout: str, files: Sequence[Path]) -> Plan:  # fmt: skip
    def build() -> Built:
        loaded = read()
        what = "CIFAR-100 python"
        fine_names = [_text(s) for s in _get(loaded["meta"], "fine_label_names", where, what)]
        coarse_names = [_text(s) for s in _get(loaded["meta"], "coarse_label_names", where, what)]
        data, fine, coarse = [], [], []
        for part in ("train", "test"):  # all 600 images of a class: 500 from train, then 100 from test
            rows = _get(loaded[part], "data", where, what)
            if (
                not isinstance(rows, np.ndarray)
                or rows.dtype != np.uint8
                or rows.ndim != 2
                or rows.shape[1] != 3072
            ):
                got = f"{rows.dtype} {rows.shape}" if isinstance(rows, np.ndarray) else type(rows).__name__
                raise DatasetError(
                    f"{where} ({part}): 'data' is {got}, expected uint8 (n, 3072); it is damaged"
                )
            data.append(rows)
            fine.append(_int_labels(_get(loaded[part], "fine_labels", where, what), where))
            coarse.append(_int_labels(_get(loaded[part], "coarse_labels", where, what), where))
        images = np.concatenate(data).reshape(-1, 3, 32, 32)  # rows are R plane, G plane, B plane
        fine_ids, coarse_ids = np.concatenate(fine), np.concatenate(coarse)
        if name == "cifarfs":
            default = _read_list(SPLITS_DIR / "cifarfs" / f"{split}.txt")
        else:
            supers = _read_list(SPLITS_DIR / "fc100" / f"{split}.txt")
            unknown = [s for s in supers if s not in coarse_names]
            if unknown:
                raise DatasetError(f"{where} has no superclass {unknown[0]!r}: it is not CIFAR-100")
            chosen = np.isin(coarse_ids, [coarse_names.index(s) for s in supers])
            default = [fine_names[i] for i in np.unique(fine_ids[chosen])]
        present = {fine_names[i] for i in np.unique(fine_ids)}
        names = _pick(present, wanted, default, where, name, split)
        rows = [np.flatnonzero(fine_ids == fine_names.index(c)) for c in names]
        write = write_array(images, np.concatenate(rows), size, channels_last=False)
        return Built(names, [len(r) for r in rows], write)

    return Plan(layout, [stat_id(p) for p in files], build)


# ----------------------------------------------------------------------------------------------------------
# CUB-200-2011

_CUB_FOLDER = re.compile(r"^(\d{3})\.(.+)$")


def cub_split_of(index: int) -> str:
    """Chen et al. 2019's split of the class with 0-based ``index`` (its folder number minus one)."""
    return "train" if index % 2 == 0 else "val" if index % 4 == 1 else "test"


def _cub_plan(root: Path, split: str, size: int, wanted: list[str] | None) -> Plan:
    images = next((b / "images" for b in (root, root / "CUB_200_2011") if (b / "images").is_dir()), None)
    if images is None:
        raise DatasetError(
            f"no CUB-200-2011 data under {root}: looked for images/<NNN.Name>/ and "
            "CUB_200_2011/images/<NNN.Name>/"
        )
    folders = {p.name: p for p in images.iterdir() if p.is_dir() and _CUB_FOLDER.match(p.name)}
    by_number = {int(_CUB_FOLDER.match(n).group(1)): n for n in folders}  # type: ignore[union-attr]
    numbers = [k for k in range(1, 201) if cub_split_of(k - 1) == split]
    if wanted is None:
        missing = [k for k in numbers if k not in by_number]
        if missing:
            raise DatasetError(
                f"{images} lacks {len(missing)} of the {len(numbers)} cub {split} classes "
                f"(e.g. the folder numbered {missing[0]:03d}): {_FIX}"
            )
    names = _pick(folders, wanted, [by_number.get(k, "") for k in numbers], images, "cub", split)
    return _folder_plan(folders, names, size, "cub-folders")


_PLANNERS: dict[str, Callable[[Path, str, int, list[str] | None], Plan]] = {
    "miniimagenet": _mini_plan,
    "tieredimagenet": _tiered_plan,
    "cifarfs": lambda root, split, size, wanted: _cifar_plan("cifarfs", root, split, size, wanted),
    "fc100": lambda root, split, size, wanted: _cifar_plan("fc100", root, split, size, wanted),
    "cub": _cub_plan,
}
