"""Image benchmarks read from local copies: every layout, the split lists, the cache, refused pickles, augment.

Every layout is built here in tmp_path, in the exact published file layout, from a few classes of tiny images
(PNG where exact pixels are compared, JPEG where the real data is JPEG). Python 2 pickles (what most published
files are) are imitated byte for byte: bytes become ``BINSTRING`` opcodes and numpy is named ``numpy.core``.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.datasets import imagecache, imagesets
from fewshot.datasets.augment import augment
from fewshot.datasets.base import ClassDataset
from fewshot.datasets.imagesets import IMAGESETS, SPLITS_DIR, cub_split_of, load_imageset
from fewshot.datasets.safepickle import load_pickle
from fewshot.datasets.storage import DatasetError

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------------------------------------
# Helpers


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (``SHORT_BINSTRING`` / ``BINSTRING``), as cPickle in Python 2 did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle(obj: object, path: Path) -> Path:
    """``obj`` pickled as Python 2 would (text given as bytes), numpy named as numpy 1.x names it."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue().replace(b"numpy._core.", b"numpy.core."))
    return path


def py3_pickle(obj: object, path: Path, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def colour(k: int) -> tuple[int, int, int]:
    """A distinct, JPEG-robust colour for class ``k``."""
    return (30 + 50 * (k % 5), 220 - 40 * (k % 4), 60 + 35 * (k % 6))


def save_image(path: Path, rgb: tuple[int, int, int], side: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), rgb).save(
        path, format="JPEG" if path.suffix == ".jpg" else "PNG", quality=95
    )
    return path


def cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def assert_colours(ds: ClassDataset, colours: list[tuple[int, int, int]], tol: float = 6) -> None:
    """Every image is (close to) its class's solid colour: labels, class order and RGB order are right."""
    means = ds.images.float().mean(dim=(-2, -1))  # (n, 3)
    expected = torch.tensor([colours[int(y)] for y in ds.labels], dtype=torch.float32)
    assert (means - expected).abs().max() <= tol


def mapped_file(tensor: torch.Tensor) -> str | None:
    """The file the memory at ``tensor.data_ptr()`` is mapped from (Linux), or None."""
    ptr = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= ptr < hi:
            return parts[5].strip() if len(parts) == 6 else None
    return None


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ----------------------------------------------------------------------------------------------------------
# The registry and the shipped split lists


def test_imagesets_registry_gives_sizes_and_one_line_descriptions() -> None:
    assert set(IMAGESETS) == {"miniimagenet", "tieredimagenet", "cifarfs", "fc100", "cub"}
    assert {k: v.image_size for k, v in IMAGESETS.items()} == {
        "miniimagenet": 84, "tieredimagenet": 84, "cifarfs": 32, "fc100": 32, "cub": 84,
    }  # fmt: skip
    assert all(v.description and "\n" not in v.description for v in IMAGESETS.values())


def test_shipped_split_lists_have_the_published_sizes() -> None:
    mini = {s: {r["label"] for r in csv.DictReader((SPLITS_DIR / "miniimagenet" / f"{s}.csv").open())}
            for s in ("train", "val", "test")}  # fmt: skip
    assert [len(mini[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    cifarfs = {s: (SPLITS_DIR / "cifarfs" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert [len(cifarfs[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert len(set().union(*cifarfs.values())) == 100
    fc100 = {s: (SPLITS_DIR / "fc100" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    coarse = sorted(set().union(*fc100.values()))  # CIFAR-100's coarse_label_names are in alphabetical order
    assert len(coarse) == 20 and coarse[0] == "aquatic_mammals" and coarse[19] == "vehicles_2"
    # Oreshkin et al.'s assignment by coarse id (ServiceNow/TADAM, datasets/create_dataset_cifar100.py)
    tadam = {
        "train": {1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19},
        "val": {8, 11, 13, 16},
        "test": {0, 7, 12, 14},
    }
    assert {s: {coarse.index(c) for c in fc100[s]} for s in fc100} == tadam
    # every shipped list has its origin and licence documented beside it
    assert all((SPLITS_DIR / d / "SOURCE.md").is_file() for d in ("miniimagenet", "cifarfs", "fc100"))


def test_cub_rule_is_chen_et_al_100_50_50() -> None:
    splits = [cub_split_of(i) for i in range(200)]
    assert [splits.count(s) for s in ("train", "val", "test")] == [100, 50, 50]
    assert splits[:8] == ["train", "val", "train", "test", "train", "val", "train", "test"]


# ----------------------------------------------------------------------------------------------------------
# mini-ImageNet


MINI_SPLITS = {"train": ["n001", "n002", "n003"], "val": ["n004", "n005"], "test": ["n006", "n007"]}


def make_mini_images(root: Path, per_class: int = 3, with_csv: bool = True) -> dict[str, int]:
    """``root/images/<wnid><8 digits>.jpg`` and ``root/<split>.csv``; returns wnid -> colour index."""
    index = {}
    for split, wnids in MINI_SPLITS.items():
        rows = []
        for wnid in wnids:
            index[wnid] = k = len(index)
            for i in range(per_class):
                name = f"{wnid}{i + 1:08d}.jpg"
                save_image(root / "images" / name, colour(k))
                rows.append((name, wnid))
        if with_csv:
            with (root / f"{split}.csv").open("w", newline="") as f:
                csv.writer(f).writerows([("filename", "label"), *rows])
    return index


def test_mini_images_with_csvs_loads_each_split(tmp_path: Path, cache: Path) -> None:
    index = make_mini_images(tmp_path / "mini")
    for split, wnids in MINI_SPLITS.items():
        ds = load_imageset(
            "miniimagenet", tmp_path / "mini", split, image_size=8, cache_dir=cache, progress=False
        )
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (3 * len(wnids), 3, 8, 8)
        assert ds.class_names == wnids
        assert ds.labels.tolist() == [k for k in range(len(wnids)) for _ in range(3)]
        assert_colours(ds, [colour(index[w]) for w in wnids])
    full = load_imageset("miniimagenet", tmp_path / "mini", "val", cache_dir=cache, progress=False)
    assert full.images.shape == (6, 3, 84, 84)  # the default size


def test_mini_images_without_csvs_use_the_shipped_ravi_split(tmp_path: Path, cache: Path) -> None:
    rows = list(csv.DictReader((SPLITS_DIR / "miniimagenet" / "test.csv").open()))
    two = list(dict.fromkeys(r["label"] for r in rows))[:2]
    for r in (r for r in rows if r["label"] in two):
        save_image(tmp_path / "images" / r["filename"], colour(two.index(r["label"])), side=4)
    ds = load_imageset("miniimagenet", tmp_path, "test", image_size=4, cache_dir=cache, progress=False,
                       classes={"test": two})  # fmt: skip
    assert ds.class_names == two and ds.images.shape == (1200, 3, 4, 4)  # 600 images a class, as listed
    assert_colours(ds, [colour(0), colour(1)])
    with pytest.raises(DatasetError, match=r"listed in test\.csv\) is missing"):
        load_imageset(
            "miniimagenet", tmp_path, "test", image_size=4, cache_dir=tmp_path / "c2", progress=False
        )
    assert cache_files(tmp_path / "c2") == []


def test_mini_class_folders_default_to_ravi_and_accept_classes(tmp_path: Path, cache: Path) -> None:
    for k, wnid in enumerate(["n9001", "n9002"]):
        for i in range(2):
            save_image(tmp_path / "train" / wnid / f"{i}.jpg", colour(k))
    with pytest.raises(
        DatasetError, match=r"lacks 64 of the 64 miniimagenet train classes \(e\.g\. 'n01532829'\)"
    ):
        load_imageset("miniimagenet", tmp_path, "train", image_size=8, cache_dir=cache, progress=False)
    ds = load_imageset("miniimagenet", tmp_path, "train", image_size=8, cache_dir=cache, progress=False,
                       classes={"train": ["n9002", "n9001"]})  # fmt: skip
    assert ds.class_names == ["n9002", "n9001"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert_colours(ds, [colour(1), colour(0)])
    (tmp_path / "train" / "n9001" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="notes.txt is not an image"):
        load_imageset("miniimagenet", tmp_path, "train", image_size=8, cache_dir=cache, progress=False,
                      classes={"train": ["n9001"]})  # fmt: skip


def mini_cache_pickle(path: Path, side: int = 84, n_per: int = 4) -> tuple[np.ndarray, dict[str, list[int]]]:
    images = RNG.integers(0, 256, (3 * n_per, side, side, 3), dtype=np.uint8)
    order = RNG.permutation(3 * n_per)
    class_dict = {
        w: sorted(order[k * n_per : (k + 1) * n_per].tolist()) for k, w in enumerate(["n3", "n1", "n2"])
    }
    py3_pickle({"image_data": images, "class_dict": class_dict}, path)
    return images, class_dict


def test_mini_cache_pickle_is_used_directly_or_resized(tmp_path: Path, cache: Path) -> None:
    images, class_dict = mini_cache_pickle(tmp_path / "mini-imagenet-cache-train.pkl")
    ds = load_imageset("miniimagenet", tmp_path, "train", cache_dir=cache, progress=False)
    assert ds.class_names == ["n1", "n2", "n3"] and ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    rows = [r for w in ds.class_names for r in class_dict[w]]
    assert torch.equal(ds.images, torch.from_numpy(images[rows].transpose(0, 3, 1, 2).copy()))
    small = load_imageset("miniimagenet", tmp_path, "train", image_size=21, cache_dir=cache, progress=False)
    assert small.images.shape == (12, 3, 21, 21)
    assert torch.equal(
        small.images[0], torch.from_numpy(imagecache.resize_array(ds.images[0].numpy(), 21).copy())
    )
    mini_cache_pickle(tmp_path / "mini-imagenet-cache-validation.pkl")  # learn2learn's name for val
    assert load_imageset("miniimagenet", tmp_path, "val", cache_dir=cache, progress=False).num_classes == 3


def test_metaoptnet_mini_pickle_written_by_python2(tmp_path: Path, cache: Path) -> None:
    images = RNG.integers(0, 256, (6, 84, 84, 3), dtype=np.uint8)
    labels = [81, 80, 81, 80, 82, 82]  # val/test files carry global ids (64..79, 80..99)
    catname2label = {b"n0a": 80, b"n0b": 81, b"n0c": 82}
    py2_pickle({b"data": images, b"labels": labels, b"catname2label": catname2label},
               tmp_path / "miniImageNet_category_split_test.pickle")  # fmt: skip
    ds = load_imageset("miniimagenet", tmp_path, "test", cache_dir=cache, progress=False)
    assert ds.class_names == ["n0a", "n0b", "n0c"] and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(ds.images, torch.from_numpy(images[[1, 3, 0, 2, 4, 5]].transpose(0, 3, 1, 2).copy()))


# ----------------------------------------------------------------------------------------------------------
# tieredImageNet


def test_tiered_png_pickle_and_npz_give_the_same_rgb_pixels(tmp_path: Path, cache: Path) -> None:
    images = RNG.integers(0, 256, (6, 84, 84, 3), dtype=np.uint8)
    labels = np.array([2, 0, 1, 2, 0, 1], dtype=np.int32)
    pngs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        pngs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))  # cv2.imencode gives 1-D uint8 arrays
    png_root, npz_root = tmp_path / "png", tmp_path / "npz" / "tiered-imagenet"
    npz_root.mkdir(parents=True)
    png_root.mkdir()
    py2_pickle(pngs, png_root / "test_images_png.pkl")
    names = [b"tench", b"goldfish", b"crane"]
    py2_pickle({b"label_specific": labels, b"label_general": labels * 0, b"label_specific_str": names,
                b"label_general_str": [b"fish"]}, png_root / "test_labels.pkl")  # fmt: skip
    np.savez(npz_root / "test_images.npz", images=images[..., ::-1])  # OpenCV's blue-green-red
    py3_pickle({"labels": labels.tolist()}, npz_root / "test_labels.pkl")
    a = load_imageset("tieredimagenet", png_root, "test", cache_dir=cache, progress=False)
    b = load_imageset("tieredimagenet", tmp_path / "npz", "test", cache_dir=cache, progress=False)
    assert a.class_names == ["tench", "goldfish", "crane"] and b.class_names == ["0", "1", "2"]
    expected = torch.from_numpy(images[[1, 4, 2, 5, 0, 3]].transpose(0, 3, 1, 2).copy())
    assert torch.equal(a.images, expected) and torch.equal(b.images, expected)
    assert a.labels.tolist() == b.labels.tolist() == [0, 0, 1, 1, 2, 2]
    picked = load_imageset("tieredimagenet", png_root, "test", cache_dir=cache, progress=False,
                           classes={"test": ["crane"]})  # fmt: skip
    assert torch.equal(picked.images, expected[4:])


# ----------------------------------------------------------------------------------------------------------
# CIFAR-FS and FC100


FINE = sorted(
    set().union(
        *((SPLITS_DIR / "cifarfs" / f"{s}.txt").read_text().split() for s in ("train", "val", "test"))
    )
)
COARSE = sorted(
    set().union(*((SPLITS_DIR / "fc100" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")))
)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A CIFAR-100 python folder (Python 2 pickles) with 2 train and 1 test image per class, and its archive.

    Fine class i belongs to superclass i % 20 (a made-up but complete assignment)."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rows = {}
    for part, per in (("train", 2), ("test", 1)):
        fine = np.repeat(np.arange(100), per)
        rows[part] = RNG.integers(0, 256, (100 * per, 3072), dtype=np.uint8)
        batch = {b"filenames": [b"x.png"] * len(fine), b"batch_label": b"batch", b"fine_labels": fine.tolist(),
                 b"coarse_labels": (fine % 20).tolist(), b"data": rows[part]}  # fmt: skip
        py2_pickle(batch, folder / part)
    meta = {
        b"fine_label_names": [n.encode() for n in FINE],
        b"coarse_label_names": [n.encode() for n in COARSE],
    }
    py2_pickle(meta, folder / "meta")
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tf:
        tf.add(folder, arcname="cifar-100-python")
    return root, rows


def cifar_images(rows: dict[str, np.ndarray], fine_id: int) -> np.ndarray:
    return np.concatenate([rows["train"][2 * fine_id : 2 * fine_id + 2], rows["test"][fine_id : fine_id + 1]])


def test_cifarfs_from_the_python_folder_and_the_archive(cifar, tmp_path: Path, cache: Path) -> None:
    root, rows = cifar
    listed = (SPLITS_DIR / "cifarfs" / "test.txt").read_text().split()
    ds = load_imageset("cifarfs", root / "cifar-100-python", "test", cache_dir=cache, progress=False)
    assert ds.class_names == listed and ds.images.shape == (60, 3, 32, 32)
    expected = np.concatenate([cifar_images(rows, FINE.index(c)) for c in listed]).reshape(-1, 3, 32, 32)
    assert torch.equal(ds.images, torch.from_numpy(expected))
    assert ds.labels.tolist() == [k for k in range(20) for _ in range(3)]
    archive_only = tmp_path / "archive"
    archive_only.mkdir()
    (archive_only / "cifar-100-python.tar.gz").write_bytes((root / "cifar-100-python.tar.gz").read_bytes())
    from_tar = load_imageset("cifarfs", archive_only, "test", cache_dir=cache, progress=False)
    assert torch.equal(from_tar.images, ds.images) and from_tar.class_names == listed
    big = load_imageset("cifarfs", root, "val", image_size=40, cache_dir=cache, progress=False)
    assert big.images.shape == (48, 3, 40, 40)


def test_fc100_takes_whole_superclasses(cifar, cache: Path) -> None:
    root, rows = cifar
    sizes = {}
    for split in ("train", "val", "test"):
        supers = {COARSE.index(s) for s in (SPLITS_DIR / "fc100" / f"{split}.txt").read_text().split()}
        ds = load_imageset("fc100", root, split, cache_dir=cache, progress=False)
        expected_ids = [i for i in range(100) if i % 20 in supers]
        assert ds.class_names == [FINE[i] for i in expected_ids]
        assert torch.equal(
            ds.images[:3], torch.from_numpy(cifar_images(rows, expected_ids[0]).reshape(-1, 3, 32, 32))
        )
        sizes[split] = ds.num_classes
    assert sizes == {"train": 60, "val": 20, "test": 20}


def test_truncated_archive_is_refused_and_caches_nothing(cifar, tmp_path: Path, cache: Path) -> None:
    data = (cifar[0] / "cifar-100-python.tar.gz").read_bytes()
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DatasetError, match=r"cifar-100-python\.tar\.gz is not a readable tar\.gz: it is truncated"
    ):
        load_imageset("cifarfs", tmp_path, "train", cache_dir=cache, progress=False)
    assert cache_files(cache) == []


def test_metaoptnet_cifar_pickles_and_a_wrong_image_size(tmp_path: Path, cache: Path) -> None:
    images = RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    py2_pickle({b"data": images, b"labels": [7, 3, 7, 3]}, tmp_path / "FC100_val.pickle")
    ds = load_imageset("fc100", tmp_path, "val", cache_dir=cache, progress=False)
    assert ds.class_names == ["3", "7"]
    assert torch.equal(ds.images, torch.from_numpy(images[[1, 3, 0, 2]].transpose(0, 3, 1, 2).copy()))
    before = cache_files(cache)
    py2_pickle({b"data": images[:, :30, :30], b"labels": [1, 2, 1, 2]}, tmp_path / "CIFAR_FS_train.pickle")
    with pytest.raises(
        DatasetError, match=r"'data' is uint8 \(4, 30, 30, 3\), expected uint8 \(n, 32, 32, 3\)"
    ):
        load_imageset("cifarfs", tmp_path, "train", cache_dir=cache, progress=False)
    assert cache_files(cache) == before


# ----------------------------------------------------------------------------------------------------------
# CUB-200-2011


def test_cub_split_by_folder_number_and_missing_class(tmp_path: Path, cache: Path) -> None:
    images = tmp_path / "CUB_200_2011" / "images"
    for k in range(1, 201):
        save_image(images / f"{k:03d}.Bird_{k}" / f"Bird_{k}_0001.jpg", colour(k), side=8)
    got = {}
    for split in ("train", "val", "test"):
        ds = load_imageset("cub", tmp_path, split, image_size=8, cache_dir=cache, progress=False)
        got[split] = [int(n[:3]) for n in ds.class_names]
        assert ds.images.shape == (len(got[split]), 3, 8, 8)
        assert_colours(ds, [colour(k) for k in got[split]])
    assert (
        got["train"] == list(range(1, 201, 2))
        and got["val"][:3] == [2, 6, 10]
        and got["test"][:3] == [4, 8, 12]
    )
    assert sorted(sum(got.values(), [])) == list(range(1, 201))
    same = load_imageset(
        "cub", tmp_path / "CUB_200_2011", "val", image_size=8, cache_dir=cache, progress=False
    )
    assert [int(n[:3]) for n in same.class_names] == got["val"]
    (images / "004.Bird_4" / "Bird_4_0001.jpg").unlink()
    (images / "004.Bird_4").rmdir()
    with pytest.raises(
        DatasetError, match=r"lacks 1 of the 50 cub test classes \(e\.g\. the folder numbered 004\)"
    ):
        load_imageset("cub", tmp_path, "test", image_size=8, cache_dir=tmp_path / "c2", progress=False)
    assert cache_files(tmp_path / "c2") == []


# ----------------------------------------------------------------------------------------------------------
# The cache


def test_second_load_reads_the_memory_mapped_cache(tmp_path: Path, cache: Path, monkeypatch) -> None:
    make_mini_images(tmp_path / "mini")
    first = load_imageset(
        "miniimagenet", tmp_path / "mini", "train", image_size=8, cache_dir=cache, progress=False
    )
    names = cache_files(cache)
    assert len(names) == 2 and names[0].endswith(".json") and names[1].endswith(".npy")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds this split")

    monkeypatch.setattr(imagecache, "decode_image", no_decoding)
    second = load_imageset(
        "miniimagenet", tmp_path / "mini", "train", image_size=8, cache_dir=cache, progress=False
    )
    assert torch.equal(first.images, second.images) and second.class_names == first.class_names
    assert torch.equal(first.labels, second.labels)
    if Path("/proc/self/maps").is_file():  # the tensor is the file's pages, not a copy in memory
        assert mapped_file(second.images) == str((cache / names[1]).resolve())
    os.utime(tmp_path / "mini" / "images" / "n00100000001.jpg", ns=(1, 1))  # a changed source: decode again
    with pytest.raises(AssertionError, match="decoded again"):
        load_imageset(
            "miniimagenet", tmp_path / "mini", "train", image_size=8, cache_dir=cache, progress=False
        )
    assert cache_files(cache) == names


def test_cached_pickle_split_does_not_read_the_pickle_again(tmp_path: Path, cache: Path, monkeypatch) -> None:
    mini_cache_pickle(tmp_path / "mini-imagenet-cache-test.pkl")
    first = load_imageset("miniimagenet", tmp_path, "test", cache_dir=cache, progress=False)
    monkeypatch.setattr(imagesets, "load_pickle", lambda *a, **k: pytest.fail("pickle read again"))
    second = load_imageset("miniimagenet", tmp_path, "test", cache_dir=cache, progress=False)
    assert torch.equal(first.images, second.images)
    second.images[0, 0, 0, 0] += 1  # copy-on-write: the process's page changes, never the file
    third = load_imageset("miniimagenet", tmp_path, "test", cache_dir=cache, progress=False)
    assert torch.equal(first.images, third.images)


def test_unwritable_cache_warns_and_decodes_in_memory(tmp_path: Path) -> None:
    make_mini_images(tmp_path / "mini")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="cannot write the image cache"):
        ds = load_imageset(
            "miniimagenet", tmp_path / "mini", "val", image_size=8, cache_dir=blocker, progress=False
        )
    assert ds.images.shape == (6, 3, 8, 8)


# ----------------------------------------------------------------------------------------------------------
# Refusals: each a DatasetError that says what is wrong, and nothing left in the cache


class _RunsCode:
    def __init__(self, func, arg) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_pickle_that_would_run_code_is_refused_without_running(
    tmp_path: Path, cache: Path, kind: str
) -> None:
    marker, proof = tmp_path / "ran1", tmp_path / "ran2"  # same length: the pickle stays valid when swapped
    if kind == "os.system":
        evil = _RunsCode(os.system, f"touch {marker}")
    else:
        evil = _RunsCode(eval, f"open({str(marker)!r}, 'w').close()")
    payload = pickle.dumps({"image_data": evil, "class_dict": {}}, protocol=2)
    # The file really is malicious: an ordinary pickle.loads runs it (on the second marker).
    pickle.loads(payload.replace(str(marker).encode(), str(proof).encode()))
    assert proof.exists()
    (tmp_path / "mini-imagenet-cache-train.pkl").write_bytes(payload)
    refused = r"is not a plain dataset pickle: it asks for \S*(system|eval).*nothing in the file was run"
    with pytest.raises(DatasetError, match=refused):
        load_imageset("miniimagenet", tmp_path, "train", cache_dir=cache, progress=False)
    assert not marker.exists()
    assert cache_files(cache) == []


def test_truncated_pickle_is_refused(tmp_path: Path, cache: Path) -> None:
    mini_cache_pickle(tmp_path / "full.pkl")
    data = (tmp_path / "full.pkl").read_bytes()
    (tmp_path / "mini-imagenet-cache-train.pkl").write_bytes(data[: len(data) // 3])
    with pytest.raises(
        DatasetError, match="mini-imagenet-cache-train.pkl is not a readable pickle: it is truncated"
    ):
        load_imageset("miniimagenet", tmp_path, "train", cache_dir=cache, progress=False)
    assert cache_files(cache) == []


def test_missing_class_and_bad_image_leave_no_file_in_the_cache(tmp_path: Path, cache: Path) -> None:
    make_mini_images(tmp_path)
    with pytest.raises(DatasetError, match=r"lacks 1 of the 2 miniimagenet val classes \(e\.g\. 'n999'\)"):
        load_imageset("miniimagenet", tmp_path, "val", image_size=8, cache_dir=cache, progress=False,
                      classes={"val": ["n004", "n999"]})  # fmt: skip
    (tmp_path / "images" / "n00300000002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(
        DatasetError, match=r"n00300000002\.jpg is not a readable image .*; remove it or replace it"
    ):
        load_imageset("miniimagenet", tmp_path, "train", image_size=8, cache_dir=cache, progress=False)
    assert cache_files(cache) == []  # the half-filled temporary file is gone too


def test_nothing_found_says_what_was_looked_for(tmp_path: Path, cache: Path) -> None:
    expected = {
        "miniimagenet": "mini-imagenet-cache-train.pkl, miniImageNet_category_split_train_phase_train.pickle",
        "tieredimagenet": "train_labels.pkl with train_images_png.pkl or train_images.npz",
        "cifarfs": "cifar-100-python/ (or its train, test and meta files), cifar-100-python.tar.gz",
        "fc100": "FC100_train.pickle",
        "cub": "images/<NNN.Name>/ and CUB_200_2011/images/<NNN.Name>/",
    }
    for name, looked_for in expected.items():
        with pytest.raises(DatasetError, match="looked for") as info:
            load_imageset(name, tmp_path, "train", cache_dir=cache, progress=False)
        assert looked_for in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown image benchmark 'imagenet'"):
        load_imageset("imagenet", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split 'trainval'"):
        load_imageset("cub", tmp_path, "trainval")
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        load_imageset("cub", tmp_path, "train", image_size=0)
    with pytest.raises(ValueError, match="classes must map"):
        load_imageset("cub", tmp_path, "train", classes={"training": ["a"]})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_imageset("cub", tmp_path / "nowhere", "train")
    assert cache_files(cache) == []


def test_safe_unpickler_reads_plain_data_of_every_protocol(tmp_path: Path) -> None:
    obj = {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "b": [np.int64(3), 1.5, "x", b"y", (1, 2)]}
    for protocol in (0, 2, 4, 5):
        got = load_pickle(py3_pickle(obj, tmp_path / f"p{protocol}.pkl", protocol))
        assert np.array_equal(got["a"], obj["a"]) and got["b"] == obj["b"]
    assert load_pickle(py2_pickle({b"k": [b"v", 1]}, tmp_path / "py2.pkl")) == {"k": ["v", 1]}


# ----------------------------------------------------------------------------------------------------------
# augment


def test_augment_is_deterministic_per_generator_and_keeps_shape_and_range() -> None:
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    a = augment(x, torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global RNG plays no part
    b = augment(x, torch.Generator().manual_seed(7))
    c = augment(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, x)


def test_augment_flip_alone_is_an_exact_mirror_of_some_images() -> None:
    x = torch.rand(64, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    out = augment(x, torch.Generator().manual_seed(3), crop_padding=0, flip=True, jitter=0)
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((flipped ^ kept).all())  # each image is exactly itself or its mirror
    assert 16 < int(flipped.sum()) < 48  # about half
    assert torch.equal(augment(x, torch.Generator().manual_seed(3), crop_padding=0, flip=False, jitter=0), x)


def test_augment_crop_is_a_window_of_the_zero_padded_image() -> None:
    x = torch.rand(12, 3, 10, 10, generator=torch.Generator().manual_seed(4)) * 0.9 + 0.1  # never 0 inside
    out = augment(x, torch.Generator().manual_seed(5), crop_padding=3, flip=False, jitter=0)
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    offsets = []
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(7)
            for dx in range(7)
            if torch.equal(out[i], padded[i, :, dy : dy + 10, dx : dx + 10])
        ]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 3  # offsets differ between images
    default = augment(torch.rand(2, 3, 84, 84), torch.Generator().manual_seed(0), flip=False, jitter=0)
    assert default.shape == (2, 3, 84, 84)


def test_augment_jitter_changes_colour_not_geometry() -> None:
    gray = torch.rand(8, 1, 5, 5, generator=torch.Generator().manual_seed(6)).expand(8, 3, 5, 5).contiguous()
    out = augment(gray, torch.Generator().manual_seed(7), crop_padding=0, flip=False, jitter=0.4)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-6) and torch.allclose(out[:, 1], out[:, 2], atol=1e-6)
    constant = torch.full((32, 3, 4, 4), 0.5)
    out = augment(constant, torch.Generator().manual_seed(8), crop_padding=0, flip=False, jitter=0.4)
    per_image = out.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)  # still flat
    assert per_image.min() >= 0.5 * 0.6 - 1e-6 and per_image.max() <= 0.5 * 1.4 + 1e-6
    assert per_image[:, 0].std() > 0.01  # brightness differs between images
    with pytest.raises(ValueError, match="jitter"):
        augment(constant, torch.Generator(), jitter=1.5)


def test_train_on_cifarfs_with_augmentation_resumes_bit_for_bit(
    cifar, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The CLI trains on a benchmark read from the user's copy, and --augment draws from (seed, episode): a run
    stopped and resumed ends with the weights of one trained in one go."""
    import dataclasses
    import json

    from conftest import resume_ends_where_one_go_does
    from fewshot.cli import main
    from fewshot.config import TrainConfig
    from fewshot.train import Trainer

    root, _ = cifar
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--dataset", "cifarfs", "--data-root", str(root), "--ways", "3", "--shots", "1",
                 "--queries", "2", "--steps", "6", "--val-every", "0", "--augment", "--hidden", "8", "--quiet",
                 "--test-ways", "3", "--test-shots", "1", "--test-episodes", "5", "--test-queries", "2",
                 "--run-dir", str(tmp_path / "run")]) == 0  # fmt: skip
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    flat = config.get("config", config)
    assert flat["image_size"] == 32 and flat["augment"] is True and flat["in_features"] == 3
    augmented = TrainConfig.of(dataset="cifarfs", data_root=str(root), ways=3, shots=1, queries=2, steps=6,
                               val_every=0, augment=True, hidden=8, log_every=2)  # fmt: skip
    a = resume_ends_where_one_go_does(augmented, tmp_path, stop_at=2).model.state_dict()
    plain = Trainer(dataclasses.replace(augmented, augment=False), tmp_path / "plain", progress=False)
    plain.run()  # and the augmentation did change what was learned
    assert not all(torch.equal(a[k], plain.model.state_dict()[k]) for k in a)
    with pytest.raises(ValueError, match="augment transforms images"):
        TrainConfig.of(dataset="table", data_root="t.csv", augment=True)
    with pytest.raises(ValueError, match="dataset miniimagenet needs --data-root"):
        TrainConfig.of(dataset="miniimagenet")


def test_the_configuration_knows_every_imageset_and_refuses_folder_conversions() -> None:
    from fewshot.config import DATA_KINDS, IMAGESET_NAMES, TrainConfig

    assert set(IMAGESET_NAMES) == set(IMAGESETS) and all(DATA_KINDS[n] == "images" for n in IMAGESET_NAMES)
    assert TrainConfig.of(dataset="fc100", data_root="x").image_size == 32
    assert TrainConfig.of(dataset="cub", data_root="x").image_size == 84
    assert TrainConfig.of(dataset="cub", data_root="x", image_size=64).image_size == 64
    for flag in (dict(channels=3), dict(invert=True)):
        with pytest.raises(
            ValueError, match="converts the images of a folder; dataset miniimagenet has its own"
        ):
            TrainConfig.of(dataset="miniimagenet", data_root="x", **flag)
