"""Omniglot: embedded copy, the three on-disk layouts, the decode cache and the checked download.

Tests that read the raw data in ``../shared/data/omniglot`` (next to the repository) skip when it is absent;
everything else runs offline from the copy shipped in the package. The download tests use a local HTTP server
on 127.0.0.1 only.
"""

from __future__ import annotations

import functools
import http.server
import importlib
import shutil
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

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
    not SHARED.is_dir(), reason=f"raw Omniglot data not found at {SHARED} (expected ../shared/data/omniglot)"
)

# Two small alphabets, one per official split, for the layout / cache / download fixtures.
SMALL = {"images_background": "Blackfoot_(Canadian_Aboriginal_Syllabics)", "images_evaluation": "Angelic"}
SMALL_COUNTS = {"Blackfoot_(Canadian_Aboriginal_Syllabics)": 14, "Angelic": 20}  # characters


def assert_same(a: OmniglotImages, b: OmniglotImages) -> None:
    assert a.images.shape == b.images.shape
    assert torch.equal(a.images, b.images)
    for name in ("split", "alphabet", "character", "drawer", "char_id"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


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
    with pytest.raises(ValueError, match="background, evaluation"):
        omniglot("val", scheme="lake")
    with pytest.raises(ValueError, match="root=.*download=True"):
        omniglot("train", image_size=32)
    with pytest.raises(ValueError, match="positive integer"):
        load_omniglot_images(image_size=0)
    with pytest.raises(ValueError, match="not both"):
        load_omniglot_images(root=tmp_path, download=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_omniglot_images(root=tmp_path / "missing")
    with pytest.raises(DatasetError, match="no Omniglot data under"):
        load_omniglot_images(root=tmp_path, cache_dir=tmp_path / "cache")


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
# Raw data: layouts, cache, equality with the embedded copy


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two SMALL alphabets in the three layouts: 'alphabet_zips', 'folders', 'official_zips'."""
    if not SHARED.is_dir():
        pytest.skip(f"raw Omniglot data not found at {SHARED}")
    base = tmp_path_factory.mktemp("layouts")
    per_alphabet, folders, official = base / "alphabet_zips", base / "folders", base / "official_zips"
    official.mkdir()
    for split, alphabet in SMALL.items():
        (per_alphabet / split).mkdir(parents=True)
        shutil.copyfile(SHARED / split / f"{alphabet}.zip", per_alphabet / split / f"{alphabet}.zip")
        with zipfile.ZipFile(SHARED / split / f"{alphabet}.zip") as zf:
            zf.extractall(folders)
            # Official-style: one deflated archive per split, with directory entries like the real ones.
            with zipfile.ZipFile(official / f"{split}.zip", "w", zipfile.ZIP_DEFLATED) as out:
                dirs = sorted({n.rsplit("/", 1)[0] + "/" for n in zf.namelist()})
                for d in [f"{split}/", *dirs]:
                    out.writestr(d, b"")
                for name in sorted(zf.namelist()):
                    out.writestr(name, zf.read(name))
    return {"alphabet_zips": per_alphabet, "folders": folders, "official_zips": official}


@pytest.fixture(scope="module")
def small(layouts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> OmniglotImages:
    return load_omniglot_images(root=layouts["alphabet_zips"], cache_dir=tmp_path_factory.mktemp("cache"))


@needs_shared
def test_embedded_equals_decoding_the_raw_zips(embedded: OmniglotImages, tmp_path: Path) -> None:
    decoded = load_omniglot_images(root=SHARED, cache_dir=tmp_path)  # all 32,460 PNGs, a few seconds
    assert_same(decoded, embedded)


@needs_shared
def test_embedded_split_files_match_the_raw_data() -> None:
    for name in ("train", "val", "trainval", "test"):
        shipped = (om.VINYALS_DIR / f"{name}.txt").read_bytes()
        assert shipped == (SHARED / "splits" / "vinyals" / f"{name}.txt").read_bytes()


@needs_shared
@pytest.mark.parametrize("layout", ["folders", "official_zips"])
def test_layouts_give_identical_images(
    layout: str, layouts: dict[str, Path], small: OmniglotImages, tmp_path: Path
) -> None:
    assert_same(load_omniglot_images(root=layouts[layout], cache_dir=tmp_path), small)


@needs_shared
def test_small_root_matches_embedded_rows(small: OmniglotImages, embedded: OmniglotImages) -> None:
    assert len(small) == 20 * sum(SMALL_COUNTS.values())
    rows = np.flatnonzero(np.isin(embedded.alphabet, list(SMALL.values())))
    picked = OmniglotImages(
        embedded.images[torch.from_numpy(rows)],
        *(getattr(embedded, f)[rows] for f in ("split", "alphabet", "character", "drawer", "char_id")),
        fingerprint="",
    )
    assert_same(small, picked)


@needs_shared
def test_datasets_from_a_root(layouts: dict[str, Path], tmp_path: Path) -> None:
    root = layouts["alphabet_zips"]
    bg = omniglot("background", scheme="lake", root=root, cache_dir=tmp_path, image_size=20)
    assert bg.num_classes == 14 and bg.image_shape == (1, 20, 20)
    with pytest.raises(DatasetError, match="lacks .* characters of the Vinyals 'train' split"):
        omniglot("train", root=root, cache_dir=tmp_path)


@needs_shared
def test_cache_is_written_once_and_reused(
    layouts: dict[str, Path], small: OmniglotImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = layouts["alphabet_zips"], tmp_path / "cache"
    first = load_omniglot_images(root=root, cache_dir=cache)
    names = files_in(cache)
    assert len(names) == 1 and names[0].startswith("omniglot-28px-") and names[0].endswith(".npz")

    def no_decoding(*args: object) -> None:
        raise AssertionError("a PNG was decoded although the cache holds these images")

    monkeypatch.setattr(om, "_decode_png", no_decoding)
    again = load_omniglot_images(root=root, cache_dir=cache)
    assert_same(again, first)
    assert files_in(cache) == names  # nothing rewritten, no temporary files
    with pytest.raises(AssertionError, match="was decoded"):  # another size is not cached yet
        load_omniglot_images(root=root, image_size=20, cache_dir=cache)


@needs_shared
def test_cache_env_var_and_stale_files(
    layouts: dict[str, Path], small: OmniglotImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "env"))
    load_omniglot_images(root=layouts["alphabet_zips"])
    (cache_file,) = (tmp_path / "env" / "omniglot").iterdir()
    cache_file.write_bytes(b"not an npz")  # e.g. a damaged disk: detected, decoded again, rewritten
    with pytest.warns(RuntimeWarning, match="ignoring cache file"):
        assert_same(load_omniglot_images(root=layouts["alphabet_zips"]), small)
    assert_same(OmniglotImages.load(cache_file), small)


@needs_shared
def test_failed_cache_write_leaves_no_file(
    layouts: dict[str, Path], small: OmniglotImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(f: object, arrays: object, compresslevel: object) -> None:
        f.write(b"PK\x03\x04 half an archive")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(om, "write_npz", disk_full)
    with pytest.warns(RuntimeWarning, match="could not write the Omniglot cache"):
        data = load_omniglot_images(root=layouts["alphabet_zips"], cache_dir=tmp_path)
    assert_same(data, small)
    assert files_in(tmp_path) == []


@needs_shared
def test_bad_archives_in_root(layouts: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(layouts["official_zips"], root)
    archive = root / "images_background.zip"
    archive.write_bytes(archive.read_bytes()[:5000])
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
def server(layouts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder) with folders good/, truncated/ and evil/ of official-style archives."""
    served = tmp_path_factory.mktemp("served")
    names = ["images_background.zip", "images_evaluation.zip"]
    for variant in ("good", "truncated", "evil"):
        (served / variant).mkdir()
        for name in names:
            shutil.copyfile(layouts["official_zips"] / name, served / variant / name)
    bg = served / "truncated" / names[0]
    bg.write_bytes(bg.read_bytes()[: bg.stat().st_size // 2])
    with zipfile.ZipFile(served / "evil" / names[0], "a") as zf:
        zf.writestr("../evil.png", b"x")
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(served))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def blob_ids(folder: Path) -> dict[str, str]:
    return {name: git_blob_sha1(folder / name) for name in ("images_background.zip", "images_evaluation.zip")}


@needs_shared
def test_download_success_and_reuse(
    server: tuple[str, Path], small: OmniglotImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, served = server
    monkeypatch.setattr(om, "OFFICIAL_BASE_URL", f"{url}/good/")
    monkeypatch.setattr(om, "OFFICIAL_BLOB_SHA1", blob_ids(served / "good"))
    cache = tmp_path / "cache"
    assert_same(load_omniglot_images(download=True, cache_dir=cache), small)
    names = files_in(cache)
    assert names[:2] == ["images_background.zip", "images_evaluation.zip"] and len(names) == 3
    # Already there and verified: no network needed (the server would answer 404 here).
    monkeypatch.setattr(om, "OFFICIAL_BASE_URL", f"{url}/missing/")
    ds = omniglot("evaluation", scheme="lake", download=True, cache_dir=cache)
    assert ds.num_classes == SMALL_COUNTS["Angelic"]
    # A damaged file in the cache fails verification, is deleted and fetched again.
    with (cache / "images_evaluation.zip").open("ab") as f:
        f.write(b"junk")
    with pytest.warns(RuntimeWarning, match="deleting it and downloading it again"):
        download_omniglot(cache, base_url=f"{url}/good")
    assert blob_ids(cache) == blob_ids(served / "good")
    assert files_in(cache) == names


@needs_shared
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


@needs_shared
def test_download_truncated_archive(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    with pytest.raises(DatasetError, match=r"images_background\.zip .* not a usable archive.*deleted"):
        download_omniglot(tmp_path, base_url=f"{url}/truncated", checksums=blob_ids(served / "truncated"))
    assert files_in(tmp_path) == []


@needs_shared
def test_download_cut_short(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    with pytest.raises(DatasetError, match=r"incomplete \(\d+ of \d+ bytes\)"):
        download_omniglot(tmp_path, base_url=f"{url}/cut/good", checksums=blob_ids(served / "good"))
    assert files_in(tmp_path) == []


@needs_shared
def test_download_not_found(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    with pytest.raises(DatasetError, match=r"missing/images_background\.zip failed: HTTP 404"):
        download_omniglot(tmp_path, base_url=f"{url}/missing", checksums=blob_ids(served / "good"))
    assert files_in(tmp_path) == []


@needs_shared
def test_download_refuses_unsafe_member(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    with pytest.raises(DatasetError, match=r"unsafe member '\.\./evil\.png'"):
        download_omniglot(tmp_path, base_url=f"{url}/evil", checksums=blob_ids(served / "evil"))
    assert files_in(tmp_path) == []
