"""Omniglot: embedded copy, the three on-disk layouts, class splits, decode cache and checked download.

Every reader, split, cache and download check runs on small synthetic archives built here (seeded random
105x105 1-bit drawings under real alphabet names, in the official zip, per-alphabet zip and folder layouts),
so a fresh clone tests everything offline. When the raw data is next to the repository
(``../shared/data/omniglot``) the same checks also run on two real alphabets, and two more tests compare the
embedded copy and its split files with the raw data; without it only those real-data variants skip. The
download tests use a local HTTP server on 127.0.0.1 only.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib
import io
import os
import re
import shutil
import struct
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.datasets import (
    ClassDataset,
    DatasetError,
    OmniglotImages,
    download_omniglot,
    load_omniglot_images,
    omniglot,
    vinyals_classes,
)
from fewshot.datasets.storage import check_member_name, git_blob_sha1

# The package exports a function named like this module, so fetch the module itself (for monkeypatching).
om = importlib.import_module("fewshot.datasets.omniglot")

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "omniglot"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason=f"raw Omniglot data not found at {SHARED} (expected ../shared/data/omniglot); "
    "the same checks ran on synthetic archives",
)

# Two small real alphabets, one per official split, for the real-data variant of the layout / cache / download
# tests.
SMALL = {"images_background": "Blackfoot_(Canadian_Aboriginal_Syllabics)", "images_evaluation": "Angelic"}

# The synthetic data: real alphabet names (with the parentheses of the real ones), few characters and drawers.
SYNTHETIC_CHARACTERS = {
    "background": {"Greek": 3, "Blackfoot_(Canadian_Aboriginal_Syllabics)": 2},
    "evaluation": {"Angelic": 2},
}
SYNTHETIC_DRAWERS = (1, 10, 20)
SIDE = 105  # the official drawings are 105x105

# Digests of the embedded copy (see embedded_digests), the one test_embedded_equals_decoding_the_raw_zips
# verified pixel for pixel against the 32,460 raw PNGs; if the embedded file is rebuilt on purpose, run that
# test with ../shared/data present and update these.
EMBEDDED_SHA256 = {
    "images": "255fbb66efe334ae4ffdf873a5d430b6232d966a38612f804baa3297751298c5",
    "metadata": "87bef835ec44e5417ac5ab28c9056538dc83fc46f207dfb835d7c63d7f8fb112",
}
# SHA-256 of Snell et al.'s Vinyals split files, as listed in ../shared/data/omniglot/SOURCE.md.
VINYALS_SHA256 = {
    "train": "984522c194c30fb678ce53304a160a42faf5403ad4f9a67010f32dd3a35738e0",
    "val": "11f99e54faee3e26f53d3231c1cceac5bf7b8730e9be31cb6dab256551dc0c1a",
    "trainval": "5276ae50c755596d0bff7f2284e85625695549a85ee6e36b6491ad1e5d1cc26a",
    "test": "845264cc5c156180828ccf17915668b17ee21424d0170df6e7d81676aa5d1204",
}
ARCHIVES = ("images_background.zip", "images_evaluation.zip")


def assert_same(a: OmniglotImages, b: OmniglotImages) -> None:
    assert a.images.shape == b.images.shape
    assert torch.equal(a.images, b.images)
    for name in ("split", "alphabet", "character", "drawer", "char_id"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def embedded_digests(data: OmniglotImages) -> dict[str, str]:
    lines = [
        f"{s}/{a}/{c}/{i:04d}_{d:02d}"
        for s, a, c, i, d in zip(
            data.split, data.alphabet, data.character, data.char_id, data.drawer, strict=True
        )
    ]
    return {
        "images": hashlib.sha256(np.ascontiguousarray(data.images.numpy()).tobytes()).hexdigest(),
        "metadata": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    }


@pytest.fixture(autouse=True)
def offline_and_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to ~/.cache; a download=True not pointed at the local server gets nowhere."""
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setattr(om, "OFFICIAL_BASE_URL", "http://127.0.0.1:9/not-the-internet/")


@pytest.fixture(scope="module")
def embedded() -> OmniglotImages:
    return load_omniglot_images()


# ----------------------------------------------------------------------------------------------------------
# The embedded copy (always available)


def test_embedded_counts(embedded: OmniglotImages) -> None:
    assert embedded.images.shape == (32_460, 1, 28, 28) and embedded.images.dtype == torch.uint8
    keys = embedded.character_keys()
    assert len(np.unique(embedded.alphabet)) == 50
    chars, per_char = np.unique(keys, return_counts=True)
    assert len(chars) == 1_623 and set(per_char) == {20}
    for split, n_alphabets, n_chars in (("background", 30, 964), ("evaluation", 20, 659)):
        rows = embedded.split == split
        assert len(np.unique(embedded.alphabet[rows])) == n_alphabets
        assert len(np.unique(keys[rows])) == n_chars
        assert rows.sum() == 20 * n_chars
    # Every character has drawers 1..20 once each, in order (the fixed sort order).
    assert np.array_equal(embedded.drawer.reshape(-1, 20), np.tile(np.arange(1, 21), (1_623, 1)))
    assert sorted(set(embedded.char_id)) == list(range(1, 1_624))
    # Inverted: background (most pixels, and the border) is 0, ink reaches 255.
    images = embedded.images
    assert (images == 0).float().mean() > 0.7
    assert (images[..., 0, :] == 0).float().mean() > 0.95  # the top row is background in almost all
    assert int(images.max()) == 255


def test_embedded_copy_is_the_verified_one(embedded: OmniglotImages) -> None:
    assert embedded_digests(embedded) == EMBEDDED_SHA256


@pytest.mark.parametrize(
    ("split", "n_classes"), [("train", 4112), ("val", 688), ("trainval", 4800), ("test", 1692)]
)
def test_vinyals_split_sizes(split: str, n_classes: int) -> None:
    ds = omniglot(split)
    assert isinstance(ds, ClassDataset)
    assert ds.num_classes == n_classes and len(ds) == 20 * n_classes
    assert ds.image_shape == (1, 28, 28)
    assert torch.equal(torch.bincount(ds.labels), torch.full((n_classes,), 20))
    assert ds.class_names == vinyals_classes(split)


def test_vinyals_characters_disjoint() -> None:
    chars = {s: {name.rsplit("/", 1)[0] for name in vinyals_classes(s)} for s in ("train", "val", "test")}
    assert (len(chars["train"]), len(chars["val"]), len(chars["test"])) == (1028, 172, 423)
    assert not chars["train"] & chars["val"] and not chars["train"] & chars["test"]
    assert not chars["val"] & chars["test"]
    assert len(chars["train"] | chars["val"] | chars["test"]) == 1_623
    assert set(vinyals_classes("trainval")) == set(vinyals_classes("train")) | set(vinyals_classes("val"))


def test_shipped_split_files_are_snells() -> None:
    got = {
        name: hashlib.sha256((om.VINYALS_DIR / f"{name}.txt").read_bytes()).hexdigest()
        for name in VINYALS_SHA256
    }
    assert got == VINYALS_SHA256


def test_vinyals_rotations_are_exact(embedded: OmniglotImages) -> None:
    ds = omniglot("val")
    first = ds.class_names[0].rsplit("/", 1)[0]
    base = embedded.images[torch.from_numpy(embedded.character_keys() == first)]
    assert base.shape[0] == 20
    for k in range(4):
        label = ds.class_names.index(f"{first}/rot{90 * k:03d}")
        got = ds.images[ds.labels == label]
        assert torch.equal(got, torch.rot90(base, k, dims=(-2, -1)))
        if k:
            assert not torch.equal(got, base)


def test_lake_scheme(embedded: OmniglotImages) -> None:
    bg, ev = omniglot("background", scheme="lake"), omniglot("evaluation", scheme="lake")
    assert (bg.num_classes, len(bg), ev.num_classes, len(ev)) == (964, 19_280, 659, 13_180)
    assert bg.class_names[0] == "Alphabet_of_the_Magi/character01" and "rot" not in bg.class_names[0]
    assert torch.equal(bg.images, embedded.images[: len(bg)])  # background comes first, no rotation
    assert torch.equal(ev.images, embedded.images[len(bg) :])
    alias = omniglot("test", scheme="lake")
    assert alias.class_names == ev.class_names and torch.equal(alias.labels, ev.labels)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scheme 'nope'.*vinyals, lake"):
        omniglot("train", scheme="nope")
    with pytest.raises(ValueError, match="train, val, trainval, test"):
        omniglot("background")
    with pytest.raises(ValueError, match="train, val, trainval, test"):
        vinyals_classes("background")
    with pytest.raises(ValueError, match="background, evaluation"):
        omniglot("val", scheme="lake")
    with pytest.raises(ValueError, match="root=.*download=True"):
        omniglot("train", image_size=32)
    for bad_size in (0, -28, True, 28.0):
        with pytest.raises(ValueError, match="positive integer"):
            load_omniglot_images(image_size=bad_size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        load_omniglot_images(root=tmp_path, download=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_omniglot_images(root=tmp_path / "missing")
    with pytest.raises(DatasetError, match="no Omniglot data under"):
        load_omniglot_images(root=tmp_path, cache_dir=tmp_path / "cache")
    (tmp_path / "images_background.txt").write_text("not a folder")
    with pytest.raises(DatasetError, match=r"images_background\.txt is a file"):
        load_omniglot_images(root=tmp_path / "images_background.txt", cache_dir=tmp_path / "cache")
    (tmp_path / "images_background" / "Greek" / "character01").mkdir(parents=True)
    (tmp_path / "images_background" / "Greek" / "character01" / "notes.txt").write_text("no drawings here")
    with pytest.raises(DatasetError, match="no drawings"):
        load_omniglot_images(root=tmp_path, cache_dir=tmp_path / "cache")
    assert files_in(tmp_path / "cache") == []


def test_git_blob_id_and_member_names(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "hello").write_bytes(b"hello\n")
    # Values printed by `git hash-object`.
    assert git_blob_sha1(tmp_path / "empty") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_sha1(tmp_path / "hello") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert om.OFFICIAL_BLOB_SHA1 == {
        "images_background.zip": "71fd167eb6fdd312049395fbd247147a4b234231",
        "images_evaluation.zip": "8ccde0ed1565641f1fa8c57cdc6ff634e15fc5c1",
    }
    check_member_name("images_background/Greek/character01/0394_01.png", "a.zip")
    for bad in ("../evil.png", "/etc/evil.png", "a/../../evil.png", "C:\\evil.png", "..\\evil.png"):
        with pytest.raises(DatasetError, match="unsafe member"):
            check_member_name(bad, "a.zip")


# ----------------------------------------------------------------------------------------------------------
# Building raw data: synthetic drawings (or real ones) written in the three layouts


@dataclass(frozen=True, eq=False)
class Drawing:
    """One raw drawing: where it goes and its PNG bytes (plus the pen mask, for synthetic ones)."""

    split: str  # "background" | "evaluation"
    alphabet: str
    character: str
    char_id: int
    drawer: int
    png: bytes
    ink: np.ndarray | None = None  # bool (105, 105), True where the pen went

    @property
    def key(self) -> str:
        return f"{self.alphabet}/{self.character}"

    @property
    def path(self) -> str:
        """Path inside a root folder, and member name inside the zips."""
        return f"images_{self.split}/{self.key}/{self.char_id:04d}_{self.drawer:02d}.png"


def encode_png(ink: np.ndarray) -> bytes:
    """A 1-bit PNG like the official ones: white (1) paper, black (0) ink."""
    page = Image.fromarray(~ink)
    assert page.mode == "1" and page.size == (SIDE, SIDE)
    buf = io.BytesIO()
    page.save(buf, format="PNG")
    return buf.getvalue()


def random_ink(rng: np.random.Generator) -> np.ndarray:
    """Blocky random strokes inside a blank margin (seeded: the same drawings on every run)."""
    coarse = rng.random((15, 15)) < 0.3
    coarse[[0, -1], :] = coarse[:, [0, -1]] = False
    return np.kron(coarse, np.ones((7, 7), dtype=bool))


def synthetic_drawings(
    characters: Mapping[str, Mapping[str, Sequence[str]]], drawers: Sequence[int], seed: int
) -> list[Drawing]:
    """Drawings of split -> alphabet -> character names, in the fixed order (char ids numbered in it)."""
    rng = np.random.default_rng(seed)
    drawings, char_id = [], 0
    for split in ("background", "evaluation"):
        for alphabet in sorted(characters.get(split, {})):
            for character in sorted(characters[split][alphabet]):
                char_id += 1
                for drawer in drawers:
                    ink = random_ink(rng)
                    drawings.append(
                        Drawing(split, alphabet, character, char_id, drawer, encode_png(ink), ink)
                    )
    return drawings


def numbered(counts: Mapping[str, int]) -> dict[str, list[str]]:
    return {alphabet: [f"character{i:02d}" for i in range(1, n + 1)] for alphabet, n in counts.items()}


def real_drawings(alphabets: Mapping[str, str]) -> list[Drawing]:
    """The drawings of some real alphabets (split folder -> alphabet) from ../shared/data/omniglot."""
    drawings = []
    for folder, alphabet in alphabets.items():
        with zipfile.ZipFile(SHARED / folder / f"{alphabet}.zip") as zf:
            for name in sorted(zf.namelist()):
                split, alpha, character, filename = name.split("/")
                char_id, drawer = (int(x) for x in filename.removesuffix(".png").split("_"))
                split = split.removeprefix("images_")
                drawings.append(Drawing(split, alpha, character, char_id, drawer, zf.read(name)))
    return drawings


def write_folders(drawings: Sequence[Drawing], root: Path) -> Path:
    """``<root>/images_<split>/<Alphabet>/characterNN/NNNN_DD.png``, plus files that are not drawings."""
    for d in drawings:
        (root / d.path).parent.mkdir(parents=True, exist_ok=True)
        (root / d.path).write_bytes(d.png)
    d = drawings[0]
    folder = root / f"images_{d.split}"
    # Ignored: a hidden folder (its fake drawing would fail to decode) and stray files.
    (folder / ".ipynb_checkpoints" / d.character).mkdir(parents=True)
    (folder / ".ipynb_checkpoints" / d.character / Path(d.path).name).write_bytes(b"not a png")
    (folder / d.key / "notes.txt").write_text("not a drawing")
    (folder / d.alphabet / "README").write_text("not a character")
    return root


def write_official_zips(drawings: Sequence[Drawing], root: Path, seed: int = 0) -> Path:
    """``<root>/images_<split>.zip`` like the official archives (deflated, with folder entries), members in a
    shuffled order, plus macOS / Windows leftovers that are not drawings."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split in ("background", "evaluation"):
        members = [d for d in drawings if d.split == split]
        if not members:
            continue
        folder = f"images_{split}"
        with zipfile.ZipFile(root / f"{folder}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted({f"{folder}/"} | {f"{folder}/{d.alphabet}/" for d in members}):
                zf.writestr(name, b"")
            for name in sorted({f"{folder}/{d.key}/" for d in members}):
                zf.writestr(name, b"")
            for i in rng.permutation(len(members)):
                zf.writestr(members[i].path, members[i].png)
            d = members[0]
            # Read as a drawing, this one would be a duplicate of d (an error): it must be skipped.
            zf.writestr(f"__MACOSX/{d.path}", b"\x00\x05\x16\x07 AppleDouble resource fork")
            zf.writestr(f"{folder}/{d.alphabet}/.DS_Store", b"\x00\x00\x00\x01Bud1")
            zf.writestr(f"{folder}/{d.key}/Thumbs.db", b"thumbnails")
    return root


def write_alphabet_zips(drawings: Sequence[Drawing], root: Path) -> Path:
    """``<root>/images_<split>/<Alphabet>.zip`` as in ../shared/data/omniglot/SOURCE.md: stored, members
    sorted and named ``images_<split>/<Alphabet>/characterNN/NNNN_DD.png``, timestamps 1980-01-01."""
    groups: dict[tuple[str, str], list[Drawing]] = {}
    for d in drawings:
        groups.setdefault((d.split, d.alphabet), []).append(d)
    for (split, alphabet), members in groups.items():
        (root / f"images_{split}").mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(root / f"images_{split}" / f"{alphabet}.zip", "w", zipfile.ZIP_STORED) as zf:
            for d in sorted(members, key=lambda d: d.path):
                zf.writestr(zipfile.ZipInfo(d.path, date_time=(1980, 1, 1, 0, 0, 0)), d.png)
    return root


def flip_a_byte(archive: Path) -> str:
    """Flip a byte inside the first file of a zip whose members are stored; returns that member's name."""
    with zipfile.ZipFile(archive) as zf:
        info = next(i for i in zf.infolist() if not i.is_dir())
    assert info.compress_type == zipfile.ZIP_STORED
    raw = bytearray(archive.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0xFF
    archive.write_bytes(bytes(raw))
    return info.filename


def reference_pixels(ink: np.ndarray, size: int) -> np.ndarray:
    """The documented decoding, done by hand: gray page, Lanczos resize, inverted (ink 255)."""
    page = Image.fromarray(np.where(ink, 0, 255).astype(np.uint8))
    if size != SIDE:
        page = page.resize((size, size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(page)


def images_of(drawings: Sequence[Drawing], pixels: Sequence[np.ndarray] | torch.Tensor) -> OmniglotImages:
    images = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.stack(pixels)).unsqueeze(1)
    return OmniglotImages(
        images=images,
        split=np.array([d.split for d in drawings]),
        alphabet=np.array([d.alphabet for d in drawings]),
        character=np.array([d.character for d in drawings]),
        drawer=np.array([d.drawer for d in drawings], dtype=np.int64),
        char_id=np.array([d.char_id for d in drawings], dtype=np.int64),
        fingerprint="",
    )


@dataclass(frozen=True, eq=False)
class Source:
    """Raw drawings written in the three layouts, and what each layout must decode to at 28x28."""

    name: str
    drawings: list[Drawing]
    roots: dict[str, Path]  # "alphabet_zips", "folders", "official_zips" -> root folder
    expected: OmniglotImages

    def characters(self, split: str) -> list[str]:
        return sorted({d.key for d in self.drawings if d.split == split})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Source:
    drawings = synthetic_drawings(
        {split: numbered(counts) for split, counts in SYNTHETIC_CHARACTERS.items()}, SYNTHETIC_DRAWERS, seed=0
    )
    base = tmp_path_factory.mktemp("synthetic")
    roots = {
        "alphabet_zips": write_alphabet_zips(drawings, base / "alphabet_zips"),
        "folders": write_folders(drawings, base / "folders"),
        "official_zips": write_official_zips(drawings, base / "official_zips"),
    }
    assert len({d.png for d in drawings}) == len(drawings) == 21  # all different: a mix-up cannot go unseen
    expected = images_of(drawings, [reference_pixels(d.ink, 28) for d in drawings])
    return Source("synthetic", drawings, roots, expected)


def shared_source(base: Path, embedded: OmniglotImages) -> Source:
    """The SMALL real alphabets: their zips as they are, and rewritten as folders and official archives."""
    drawings = real_drawings(SMALL)
    alphabet_zips = base / "alphabet_zips"
    for folder, alphabet in SMALL.items():
        (alphabet_zips / folder).mkdir(parents=True)
        shutil.copyfile(SHARED / folder / f"{alphabet}.zip", alphabet_zips / folder / f"{alphabet}.zip")
    roots = {
        "alphabet_zips": alphabet_zips,
        "folders": write_folders(drawings, base / "folders"),
        "official_zips": write_official_zips(drawings, base / "official_zips"),
    }
    rows = torch.from_numpy(np.flatnonzero(np.isin(embedded.alphabet, list(SMALL.values()))))
    return Source("shared", drawings, roots, images_of(drawings, embedded.images[rows]))


@pytest.fixture(scope="module", params=["synthetic", pytest.param("shared", marks=needs_shared)])
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Source:
    if request.param == "synthetic":
        return request.getfixturevalue("synthetic")
    return shared_source(tmp_path_factory.mktemp("shared"), request.getfixturevalue("embedded"))


@pytest.fixture(scope="module")
def small(source: Source, tmp_path_factory: pytest.TempPathFactory) -> OmniglotImages:
    return load_omniglot_images(
        root=source.roots["alphabet_zips"], cache_dir=tmp_path_factory.mktemp("cache")
    )


# ----------------------------------------------------------------------------------------------------------
# Raw data: layouts, splits, cache, equality with the embedded copy


@needs_shared
def test_embedded_equals_decoding_the_raw_zips(embedded: OmniglotImages, tmp_path: Path) -> None:
    decoded = load_omniglot_images(root=SHARED, cache_dir=tmp_path)  # all 32,460 PNGs, a few seconds
    assert_same(decoded, embedded)
    assert embedded_digests(decoded) == EMBEDDED_SHA256


@needs_shared
def test_embedded_split_files_match_the_raw_data() -> None:
    for name in ("train", "val", "trainval", "test"):
        shipped = (om.VINYALS_DIR / f"{name}.txt").read_bytes()
        assert shipped == (SHARED / "splits" / "vinyals" / f"{name}.txt").read_bytes()


def test_root_decodes_to_the_expected_images(source: Source, small: OmniglotImages) -> None:
    # synthetic: the hand-made reference decoding; shared: the rows of the embedded copy
    assert len(small) == len(source.drawings) == len(source.expected)
    assert_same(small, source.expected)


@pytest.mark.parametrize("layout", ["folders", "official_zips"])
def test_layouts_give_identical_images(
    layout: str, source: Source, small: OmniglotImages, tmp_path: Path
) -> None:
    assert_same(load_omniglot_images(root=source.roots[layout], cache_dir=tmp_path), small)


def test_synthetic_pixels_round_trip_exactly(synthetic: Source, tmp_path: Path) -> None:
    # At 105x105 nothing is resized: ink must come back as exactly 255 and paper as 0, in the fixed order
    # (the official-style zips hold their members shuffled) and with junk files ignored, in every layout.
    want = np.stack([d.ink for d in synthetic.drawings]).astype(np.uint8) * 255
    assert len(want) == 21 and 0.05 < want.mean() / 255 < 0.5
    for layout, root in synthetic.roots.items():
        data = om.decode_omniglot(root, image_size=SIDE)
        assert data.images.shape == (21, 1, SIDE, SIDE) and data.images.dtype == torch.uint8, layout
        assert np.array_equal(data.images[:, 0].numpy(), want), layout
        assert_same(data, images_of(synthetic.drawings, list(want)))
        assert list(data.drawer[:3]) == [1, 10, 20] and list(data.char_id[:3]) == [1, 1, 1]
        assert repr(data) == "OmniglotImages(21 images of 105x105, 7 characters)"
    assert not (tmp_path / "default-cache").exists()  # decode_omniglot touches no cache


def test_layout_detected_per_split(synthetic: Source, tmp_path: Path) -> None:
    for background, evaluation in (("official_zips", "alphabet_zips"), ("folders", "official_zips")):
        root = tmp_path / f"{background}+{evaluation}"
        root.mkdir()
        for folder, layout in (("images_background", background), ("images_evaluation", evaluation)):
            if layout == "official_zips":
                shutil.copyfile(synthetic.roots[layout] / f"{folder}.zip", root / f"{folder}.zip")
                # A half-finished extraction beside the official archive is ignored (it would fail to decode).
                broken = root / folder / "Angelic" / "character01" / "0006_01.png"
                broken.parent.mkdir(parents=True)
                broken.write_bytes(b"\x89PNG half written")
            else:
                shutil.copytree(synthetic.roots[layout] / folder, root / folder)
        assert_same(load_omniglot_images(root=root, cache_dir=tmp_path / "cache"), synthetic.expected)


def test_datasets_from_a_root(source: Source, tmp_path: Path) -> None:
    root = source.roots["alphabet_zips"]
    bg = omniglot("background", scheme="lake", root=root, cache_dir=tmp_path, image_size=20)
    assert bg.num_classes == len(source.characters("background")) and bg.image_shape == (1, 20, 20)
    with pytest.raises(DatasetError, match="lacks .* characters of the Vinyals 'train' split"):
        omniglot("train", root=root, cache_dir=tmp_path)


def test_lake_split_from_a_root(source: Source, small: OmniglotImages, tmp_path: Path) -> None:
    root = source.roots["official_zips"]
    for split, alias in (("background", "train"), ("evaluation", "test")):
        ds = omniglot(split, scheme="lake", root=root, cache_dir=tmp_path)
        names = source.characters(split)  # one class per character, sorted, no rotation
        n_images = sum(d.split == split for d in source.drawings)
        assert ds.class_names == names and ds.num_classes == len(names) and len(ds) == n_images
        assert torch.equal(ds.labels, torch.arange(len(names)).repeat_interleave(n_images // len(names)))
        rows = small.split == split
        assert [ds.class_names[i] for i in ds.labels] == list(small.character_keys()[rows])
        assert torch.equal(ds.images, small.images[torch.from_numpy(rows)])
        again = omniglot(alias, scheme="lake", root=root, cache_dir=tmp_path)
        assert again.class_names == names and torch.equal(again.labels, ds.labels)
        assert torch.equal(again.images, ds.images)
    only_background = tmp_path / "only_background"
    only_background.mkdir()
    shutil.copyfile(root / "images_background.zip", only_background / "images_background.zip")
    with pytest.raises(DatasetError, match="no images of the evaluation set.*images_evaluation"):
        omniglot("evaluation", scheme="lake", root=only_background, cache_dir=tmp_path)
    assert omniglot("background", scheme="lake", root=only_background, cache_dir=tmp_path).class_names == (
        source.characters("background")
    )


def pil_rotated(png: bytes, quarter_turns: int) -> np.ndarray:
    """What Snell et al. did: PIL's rotate (counter-clockwise), here on the decoded, inverted drawing."""
    with Image.open(io.BytesIO(png)) as im:
        page = im.convert("L").rotate(90 * quarter_turns)
    return 255 - np.asarray(page)


@pytest.fixture(scope="module")
def vinyals_val(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Drawing]]:
    """Per-alphabet zips with exactly the 172 characters of the shipped Vinyals val split, 2 drawers each."""
    characters: dict[str, list[str]] = {}
    for key in dict.fromkeys(name.rsplit("/", 1)[0] for name in vinyals_classes("val")):
        alphabet, character = key.split("/")
        characters.setdefault(alphabet, []).append(character)
    drawings = synthetic_drawings({"background": characters}, drawers=(1, 2), seed=1)
    return write_alphabet_zips(drawings, tmp_path_factory.mktemp("vinyals_val")), drawings


def test_vinyals_split_from_a_root(vinyals_val: tuple[Path, list[Drawing]], tmp_path: Path) -> None:
    root, drawings = vinyals_val
    assert len({d.alphabet for d in drawings}) == 5 and len(drawings) == 2 * 172
    ds = omniglot("val", root=root, image_size=SIDE, cache_dir=tmp_path)
    assert ds.num_classes == 688 and len(ds) == 2 * 688 and ds.image_shape == (1, SIDE, SIDE)
    assert ds.class_names == vinyals_classes("val")  # the order of the split file
    assert torch.equal(ds.labels, torch.arange(688).repeat_interleave(2))
    pngs: dict[str, list[bytes]] = {}
    for d in drawings:
        pngs.setdefault(d.key, []).append(d.png)
    assert {name.rsplit("/", 1)[1] for name in ds.class_names} == {"rot000", "rot090", "rot180", "rot270"}
    want = []
    for name in ds.class_names:
        key, rotation = name.rsplit("/", 1)
        want.extend(pil_rotated(png, int(rotation.removeprefix("rot")) // 90) for png in pngs[key])
    got = ds.images[:, 0].numpy()
    wrong = [ds.class_names[i // 2] for i in range(len(got)) if not np.array_equal(got[i], want[i])]
    assert not wrong, f"{len(wrong)} images differ from PIL's rotation, e.g. of {wrong[0]}"
    # The other splits need characters this root lacks: every one of them is missing.
    for split, n_missing in (("train", 1028), ("test", 423)):
        with pytest.raises(
            DatasetError, match=f"lacks {n_missing} characters of the Vinyals '{split}' split"
        ):
            omniglot(split, root=root, image_size=SIDE, cache_dir=tmp_path)
    with pytest.raises(DatasetError, match="lacks 1028 characters of the Vinyals 'trainval' split"):
        omniglot("trainval", root=root, image_size=SIDE, cache_dir=tmp_path)


def test_vinyals_split_files_are_checked(
    synthetic: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    monkeypatch.setattr(om, "VINYALS_DIR", split_dir)
    with pytest.raises(FileNotFoundError, match=r"val\.txt is missing"):
        vinyals_classes("val")
    (split_dir / "val.txt").write_text("Greek/character01/rot090\n\nGreek/character02/rot45\n")
    with pytest.raises(DatasetError, match=r"val\.txt:3: expected .*'Greek/character02/rot45'"):
        # Fails before the images are read: this root does not even exist.
        omniglot("val", root=tmp_path / "no-such-root", cache_dir=tmp_path)
    # A split of the synthetic characters: class order and rotations follow the file.
    (split_dir / "val.txt").write_text("Greek/character02/rot270\nAngelic/character01/rot180\n\n")
    assert vinyals_classes("val") == ["Greek/character02/rot270", "Angelic/character01/rot180"]
    ds = omniglot("val", root=synthetic.roots["folders"], image_size=SIDE, cache_dir=tmp_path)
    assert ds.class_names == vinyals_classes("val") and len(ds) == 6
    for label, (key, k) in enumerate((("Greek/character02", 3), ("Angelic/character01", 2))):
        want = np.stack([pil_rotated(d.png, k) for d in synthetic.drawings if d.key == key])
        assert np.array_equal(ds.images[ds.labels == label][:, 0].numpy(), want)


def test_cache_is_written_once_and_reused(
    source: Source, small: OmniglotImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = source.roots["alphabet_zips"], tmp_path / "cache"
    first = load_omniglot_images(root=root, cache_dir=cache)
    assert_same(first, small)
    names = files_in(cache)
    assert len(names) == 1 and names[0].startswith("omniglot-28px-") and names[0].endswith(".npz")

    def no_decoding(*args: object) -> None:
        raise AssertionError("a PNG was decoded although the cache holds these images")

    monkeypatch.setattr(om, "_decode_png", no_decoding)
    again = load_omniglot_images(root=root, cache_dir=cache)
    assert_same(again, first)
    assert again.fingerprint == first.fingerprint
    assert files_in(cache) == names  # nothing rewritten, no temporary files
    with pytest.raises(AssertionError, match="was decoded"):  # another size is not cached yet
        load_omniglot_images(root=root, image_size=20, cache_dir=cache)


def test_cache_env_var_and_stale_files(
    source: Source, small: OmniglotImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "env"))
    load_omniglot_images(root=source.roots["alphabet_zips"])
    (cache_file,) = (tmp_path / "env" / "omniglot").iterdir()
    cache_file.write_bytes(b"not an npz")  # e.g. a damaged disk: detected, decoded again, rewritten
    with pytest.warns(RuntimeWarning, match="ignoring cache file"):
        assert_same(load_omniglot_images(root=source.roots["alphabet_zips"]), small)
    assert_same(OmniglotImages.load(cache_file), small)


def test_failed_cache_write_leaves_no_file(
    source: Source, small: OmniglotImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(f: object, arrays: object, compresslevel: object) -> None:
        f.write(b"PK\x03\x04 half an archive")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(om, "write_npz", disk_full)
    with pytest.warns(RuntimeWarning, match="could not write the Omniglot cache"):
        data = load_omniglot_images(root=source.roots["alphabet_zips"], cache_dir=tmp_path)
    assert_same(data, small)
    assert files_in(tmp_path) == []


def test_cache_follows_changes_to_the_source(synthetic: Source, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    want = np.stack([d.ink for d in synthetic.drawings]).astype(np.uint8) * 255
    redrawn = ~synthetic.drawings[4].ink  # a different drawing for row 4
    want[4] = redrawn.astype(np.uint8) * 255
    for layout in ("folders", "alphabet_zips"):
        root = tmp_path / layout
        shutil.copytree(synthetic.roots[layout], root)
        load_omniglot_images(root=root, image_size=SIDE, cache_dir=cache)
        d = synthetic.drawings[4]
        if layout == "folders":
            path = root / d.path
            before = path.stat()
            path.write_bytes(encode_png(redrawn))
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # even on a coarse clock
        else:
            changed = [
                Drawing(e.split, e.alphabet, e.character, e.char_id, e.drawer, encode_png(redrawn))
                if e is d
                else e
                for e in synthetic.drawings
            ]
            shutil.rmtree(root)
            write_alphabet_zips(changed, root)
        data = load_omniglot_images(root=root, image_size=SIDE, cache_dir=cache)
        assert np.array_equal(data.images[:, 0].numpy(), want), layout
    assert len(files_in(cache)) == 4  # two per layout: before and after the change


def test_bad_archives_in_root(source: Source, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(source.roots["official_zips"], root)
    archive = root / "images_background.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(
        DatasetError, match=r"images_background\.zip is not a readable zip.*truncated or corrupt"
    ):
        load_omniglot_images(root=root, cache_dir=tmp_path / "cache")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images_background/Greek/character01/0394_01.png", b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"cannot decode .*0394_01\.png"):
        load_omniglot_images(root=root, cache_dir=tmp_path / "cache")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../evil.png", b"x")
    with pytest.raises(DatasetError, match=r"unsafe member '\.\./evil\.png'"):
        load_omniglot_images(root=root, cache_dir=tmp_path / "cache")
    assert files_in(tmp_path / "cache") == []


def test_corrupt_member_and_duplicate_drawings(synthetic: Source, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(synthetic.roots["alphabet_zips"], root)
    archive = root / "images_evaluation" / "Angelic.zip"
    member = flip_a_byte(archive)  # the listing still works, reading that member fails its CRC
    with pytest.raises(DatasetError, match=rf"cannot read .*Angelic\.zip:{re.escape(member)} .*CRC"):
        load_omniglot_images(root=root, cache_dir=tmp_path / "cache")
    shutil.copyfile(synthetic.roots["alphabet_zips"] / "images_evaluation" / "Angelic.zip", archive)
    shutil.copyfile(archive, archive.with_name("Angelic (1).zip"))  # the same alphabet downloaded twice
    with pytest.raises(DatasetError, match=r"Angelic \(1\)\.zip.*Angelic\.zip.*same drawing twice"):
        load_omniglot_images(root=root, cache_dir=tmp_path / "cache")
    assert files_in(tmp_path / "cache") == []


# ----------------------------------------------------------------------------------------------------------
# Download, against a local server


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/cut/<path>`` announces the full length but sends half and hangs up."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/cut/"):
            data = (Path(self.directory) / self.path.removeprefix("/cut/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder) with good/, truncated/, evil/ and corrupt/ official-style archives."""
    served = tmp_path_factory.mktemp("served")
    for variant in ("good", "truncated", "evil", "corrupt"):
        (served / variant).mkdir()
        for name in ARCHIVES:
            shutil.copyfile(source.roots["official_zips"] / name, served / variant / name)
    bg = served / "truncated" / ARCHIVES[0]
    bg.write_bytes(bg.read_bytes()[: bg.stat().st_size // 2])
    with zipfile.ZipFile(served / "evil" / ARCHIVES[0], "a") as zf:
        zf.writestr("../evil.png", b"x")
    # corrupt/: a well-formed evaluation archive (members stored) with one member failing its CRC.
    with (
        zipfile.ZipFile(source.roots["official_zips"] / ARCHIVES[1]) as good,
        zipfile.ZipFile(served / "corrupt" / ARCHIVES[1], "w", zipfile.ZIP_STORED) as out,
    ):
        for info in good.infolist():
            out.writestr(info.filename, good.read(info))
    flip_a_byte(served / "corrupt" / ARCHIVES[1])
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(served))
    )
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def blob_ids(folder: Path) -> dict[str, str]:
    return {name: git_blob_sha1(folder / name) for name in ARCHIVES}


def test_download_success_and_reuse(
    source: Source,
    server: tuple[str, Path],
    small: OmniglotImages,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, served = server
    monkeypatch.setattr(om, "OFFICIAL_BASE_URL", f"{url}/good/")
    monkeypatch.setattr(om, "OFFICIAL_BLOB_SHA1", blob_ids(served / "good"))
    cache = tmp_path / "cache"
    assert_same(load_omniglot_images(download=True, cache_dir=cache), small)
    names = files_in(cache)
    assert names[:2] == list(ARCHIVES) and len(names) == 3
    assert blob_ids(cache) == blob_ids(served / "good")
    # Already there and verified: no network needed (the server would answer 404 here).
    monkeypatch.setattr(om, "OFFICIAL_BASE_URL", f"{url}/missing/")
    ds = omniglot("evaluation", scheme="lake", download=True, cache_dir=cache)
    assert ds.class_names == source.characters("evaluation")
    # A damaged file in the cache fails verification, is deleted and fetched again.
    with (cache / "images_evaluation.zip").open("ab") as f:
        f.write(b"junk")
    with pytest.warns(RuntimeWarning, match="deleting it and downloading it again"):
        download_omniglot(cache, base_url=f"{url}/good")
    assert blob_ids(cache) == blob_ids(served / "good")
    assert files_in(cache) == names


def test_download_checksum_mismatch(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    wrong = dict(blob_ids(served / "good"), **{"images_background.zip": "0" * 40})
    with pytest.raises(
        DatasetError, match=r"images_background\.zip .* git blob id .* expected 0{40}.*deleted"
    ):
        download_omniglot(tmp_path, base_url=f"{url}/good", checksums=wrong)
    assert files_in(tmp_path) == []
    with pytest.raises(DatasetError, match="git blob id"):  # the real ids never match these test archives
        download_omniglot(tmp_path, base_url=f"{url}/good")
    assert files_in(tmp_path) == []


def test_download_truncated_archive(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    with pytest.raises(DatasetError, match=r"images_background\.zip .* not a usable archive.*deleted"):
        download_omniglot(tmp_path, base_url=f"{url}/truncated", checksums=blob_ids(served / "truncated"))
    assert files_in(tmp_path) == []


def test_download_corrupt_member(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    with pytest.raises(
        DatasetError,
        match=r"images_evaluation\.zip downloaded from \S+ is not a usable archive "
        r"\(member images_evaluation/\S+\.png fails its CRC check\); it was deleted",
    ):
        download_omniglot(tmp_path, base_url=f"{url}/corrupt", checksums=blob_ids(served / "corrupt"))
    assert files_in(tmp_path) == ["images_background.zip"]  # the good one is kept, verified
    assert (
        git_blob_sha1(tmp_path / "images_background.zip")
        == blob_ids(served / "good")["images_background.zip"]
    )


def test_download_cut_short(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    with pytest.raises(DatasetError, match=r"incomplete \(\d+ of \d+ bytes\)"):
        download_omniglot(tmp_path, base_url=f"{url}/cut/good", checksums=blob_ids(served / "good"))
    assert files_in(tmp_path) == []


def test_download_not_found(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    with pytest.raises(DatasetError, match=r"missing/images_background\.zip failed: HTTP 404"):
        download_omniglot(tmp_path, base_url=f"{url}/missing", checksums=blob_ids(served / "good"))
    assert files_in(tmp_path) == []


def test_download_refuses_unsafe_member(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    with pytest.raises(DatasetError, match=r"unsafe member '\.\./evil\.png'"):
        download_omniglot(tmp_path, base_url=f"{url}/evil", checksums=blob_ids(served / "evil"))
    assert files_in(tmp_path) == []


def test_macos_companion_files_beside_alphabet_zips_are_ignored(synthetic: Source, tmp_path: Path) -> None:
    """A copy to a FAT or network drive from macOS leaves ``._Greek.zip`` (resource forks) beside ``Greek.zip``."""
    root = tmp_path / "copied"
    shutil.copytree(synthetic.roots["alphabet_zips"], root)
    for folder in ("images_background", "images_evaluation"):
        for z in list((root / folder).glob("*.zip")):
            (root / folder / f"._{z.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert_same(load_omniglot_images(root=root, cache_dir=tmp_path / "cache"), synthetic.expected)
