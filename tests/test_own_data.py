"""Your own data: image folders and tables through the same episode machinery, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.cli import main
from fewshot.datasets.folder import check_files, image_folder
from fewshot.datasets.storage import DatasetError
from fewshot.datasets.table import read_table, table_dataset
from fewshot.tasks.episodes import EpisodeSampler


def omniglot_folder(
    root: Path, classes: int = 12, per_class: int = 6, size: int = 40, rgb: bool = False
) -> Path:
    """PNG files like the original Omniglot (dark ink on white), made from the embedded copy."""
    from fewshot import omniglot

    data = omniglot("test")
    for c in range(classes):
        folder = root / data.class_names[c * 20].replace("/", "_")
        folder.mkdir(parents=True)
        for j, img in enumerate(data.images[data.labels == c * 20][:per_class]):
            im = Image.fromarray(255 - img[0].numpy()).resize((size, size))
            (im.convert("RGB") if rgb else im).save(folder / f"{j:02d}.png")
    return root


def test_image_folder_splits_classes_and_converts_images(tmp_path):
    root = omniglot_folder(tmp_path / "chars", rgb=True)
    parts = {s: image_folder(root, s, image_size=28, invert=True) for s in ("train", "val", "test")}
    names = [set(p.class_names) for p in parts.values()]
    assert sum(map(len, names)) == 12 and not (
        names[0] & names[1] or names[0] & names[2] or names[1] & names[2]
    )
    train = parts["train"]
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    assert train.images.float().mean() < 60  # inverted: mostly dark background, bright strokes
    assert image_folder(root, "train", invert=True).class_names == train.class_names  # the split is seeded
    task = EpisodeSampler(train.labels, 3, 2, 3, 1, seed=0).task(train, 0)
    assert task.support.x.shape == (6, 1, 28, 28)
    rgb = image_folder(root, "all", image_size=16, channels=3)
    assert rgb.images.shape[1:] == (3, 16, 16) and rgb.num_classes == 12


def test_image_folder_with_train_val_test_folders(tmp_path):
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        omniglot_folder(tmp_path / split, classes=n)
    assert (
        image_folder(tmp_path, "test").num_classes == 2 and image_folder(tmp_path, "train").num_classes == 3
    )


def test_image_folder_bad_inputs_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "missing")
    root = omniglot_folder(tmp_path / "d", classes=3)
    (root / "notes.txt").write_text("x")  # a file beside the class folders is ignored; inside one it is not
    bad = next(p for p in root.iterdir() if p.is_dir())
    (bad / "readme.txt").write_text("hello")
    with pytest.raises(DatasetError, match="readme.txt is not an image"):
        image_folder(root)
    (bad / "readme.txt").unlink()
    (bad / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png is not a readable image"):
        image_folder(root)
    (bad / "broken.png").unlink()
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match="has no images"):
        image_folder(root)


def test_tables_csv_and_npz(tmp_path):
    g = np.random.default_rng(0)
    x = np.concatenate([g.normal(c, 0.3, size=(8, 4)) for c in range(10)]).astype(np.float32)
    y = np.repeat([f"k{c}" for c in range(10)], 8)
    np.savez(tmp_path / "t.npz", x=x, y=y)
    header = "a,b,label,c,d\n"
    rows = [f"{r[0]},{r[1]},{lab},{r[2]},{r[3]}" for r, lab in zip(x, y, strict=True)]
    (tmp_path / "t.csv").write_text(header + "\n".join(rows) + "\n")
    a, b = table_dataset(tmp_path / "t.npz", "train"), table_dataset(tmp_path / "t.csv", "train")
    assert a.class_names == b.class_names and torch.allclose(a.features, b.features)
    assert a.image_shape == (4,) and len(a) == 8 * a.num_classes
    (tmp_path / "empty.csv").write_text("a,label\n")
    with pytest.raises(DatasetError, match="has no rows"):
        table_dataset(tmp_path / "empty.csv")
    with pytest.raises(DatasetError, match="no 'kind' column"):
        table_dataset(tmp_path / "t.csv", label="kind")
    (tmp_path / "words.csv").write_text("a,label\nx,1\n")
    with pytest.raises(DatasetError, match="must be numeric"):
        table_dataset(tmp_path / "words.csv")


def test_cli_trains_on_a_folder_and_a_table(tmp_path, one_thread, capsys):
    root = omniglot_folder(tmp_path / "chars", classes=15)
    common = ["--steps", "4", "--log-every", "2", "--val-every", "2", "--val-episodes", "2", "--hidden", "8", "--test-queries", "2",
              "--test-episodes", "3", "--test-shots", "1", "--quiet"]  # fmt: skip
    argv = ["train", "--dataset", "folder", "--data-root", str(root), "--invert", "--ways", "3", "--shots", "1",
            "--queries", "2", "--val-ways", "2", "--val-shots", "1", "--test-ways", "2", "--run-dir", str(tmp_path / "f")]  # fmt: skip
    assert main([*argv, *common]) == 0
    config = json.loads((tmp_path / "f" / "config.json").read_text())["config"]
    assert config["in_features"] == 1 and config["dataset"] == "folder"
    g = np.random.default_rng(0)
    x = np.concatenate([g.normal(c, 0.3, size=(8, 4)) for c in range(12)]).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, y=np.repeat(np.arange(12), 8))
    argv = ["train", "--algorithm", "maml", "--dataset", "table", "--data-root", str(tmp_path / "t.npz"), "--ways", "2",
            "--shots", "1", "--queries", "2", "--tasks-per-step", "2", "--run-dir", str(tmp_path / "t")]  # fmt: skip
    assert main([*argv, *common]) == 0
    capsys.readouterr()
    assert main(["train", "--dataset", "folder", "--run-dir", str(tmp_path / "x")]) == 2
    assert "needs --data-root" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--dataset",
                "folder",
                "--data-root",
                str(tmp_path / "nope"),
                "--run-dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message.strip(), message
    return message


def test_tables_refuse_nonfinite_values_naming_file_row_and_column(tmp_path):
    header = "a,b,label\n"
    rows = [f"{i},{i + 1},k{i % 4}" for i in range(12)]
    for value, shown in (("nan", "'nan'"), ("-inf", "'-inf'"), ("1e40", "'1e40'")):
        bad = [*rows]
        bad[7] = f"7,{value},k3"  # the 8th data row: line 9 of the file (the header is line 1)
        path = tmp_path / "t.csv"
        path.write_text(header + "\n".join(bad) + "\n")
        for load, args in ((table_dataset, (path, "train")), (read_table, (path,))):
            with pytest.raises(DatasetError) as e:
                load(*args)
            message = one_line(e)
            assert str(path) in message and "row 9" in message and "column 'b'" in message, message
            assert shown in message and "not a finite number" in message, message
        x, _ = read_table(path, allow_nonfinite=True)  # allowed only when asked
        assert not np.isfinite(x[7, 1])
        assert len(table_dataset(path, "all", allow_nonfinite=True)) == 12
    (tmp_path / "blank.csv").write_text("a,label\n\n1,x\nnan,y\n")  # a blank line: rows named by line
    with pytest.raises(DatasetError, match=r"row 4, column 'a'"):
        read_table(tmp_path / "blank.csv")
    (tmp_path / "word.csv").write_text("a,b,label\n1,2,x\n3,oops,y\n")
    with pytest.raises(DatasetError, match=r"row 3, column 'b' is 'oops', not a number"):
        read_table(tmp_path / "word.csv")
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    x[4, 2], x[6, 0] = np.nan, np.inf
    np.savez(tmp_path / "t.npz", x=x, y=np.arange(10) % 3)
    with pytest.raises(DatasetError) as e:
        table_dataset(tmp_path / "t.npz", "train")
    message = one_line(e)
    assert str(tmp_path / "t.npz") in message and "array 'x' row 4, column 2" in message, message
    assert "1 other value" in message
    x[4, 2], x[6, 0] = 1e300, 0  # finite in float64, infinite in float32
    np.savez(tmp_path / "big.npz", x=x, y=np.arange(10) % 3)
    with pytest.raises(DatasetError, match="row 4, column 2 .* beyond float32's range"):
        read_table(tmp_path / "big.npz")


def test_npz_with_object_or_unreadable_arrays_is_refused_naming_file_and_array(tmp_path):
    ragged = np.empty(3, dtype=object)
    ragged[:] = [[1.0, 2.0], [3.0], [4.0, 5.0]]
    np.savez(tmp_path / "ragged.npz", x=ragged, y=np.arange(3))
    np.savez(tmp_path / "objects.npz", x=np.ones((3, 2)), y=np.array(["a", 1, None], dtype=object))
    for name, array in (("ragged.npz", "x"), ("objects.npz", "y")):
        with pytest.raises(DatasetError) as e:
            table_dataset(tmp_path / name)
        message = one_line(e)
        assert str(tmp_path / name) in message and f"array {array!r}" in message, message
        assert "save numeric arrays" in message and "allow_pickle" not in message, message
    np.save(tmp_path / "one.npy", np.ones(3))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    (tmp_path / "text.npz").write_text("a,b\n1,2\n")
    np.savez(tmp_path / "words.npz", x=np.array([["1", "a"]]), y=np.array([0]))
    np.savez(tmp_path / "column.npz", x=np.ones((3, 2)), y=np.zeros((3, 1)))
    cases = {"one.npz": "one unnamed array", "text.npz": "is not an .npz archive", "words.npz": "as numbers",
             "column.npz": "a 1-D array"}  # fmt: skip
    for name, words in cases.items():
        with pytest.raises(DatasetError) as e:
            read_table(tmp_path / name)
        assert str(tmp_path / name) in one_line(e) and words in str(e.value), str(e.value)


def test_csv_tables_must_be_utf8_and_may_start_with_a_byte_order_mark(tmp_path):
    (tmp_path / "bom.csv").write_bytes("label,a\nx,1\ny,2\n".encode("utf-8-sig"))  # as Excel saves it
    assert read_table(tmp_path / "bom.csv")[1] == ["x", "y"]
    (tmp_path / "latin.csv").write_bytes("label,a\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DatasetError) as e:
        read_table(tmp_path / "latin.csv")
    assert str(tmp_path / "latin.csv") in one_line(e) and "not UTF-8" in str(e.value)
    with pytest.raises(DatasetError, match="is a folder; give a table file"):
        read_table(tmp_path)


def test_a_folder_without_class_folders_says_so(tmp_path):
    root = tmp_path / "loose"
    root.mkdir()
    Image.new("L", (8, 8)).save(root / "a.png")
    Image.new("L", (8, 8)).save(root / "b.png")
    (tmp_path / "empty").mkdir()
    for folder, holds in ((root, "it holds 2 image file(s) directly"), (tmp_path / "empty", "it is empty")):
        with pytest.raises(DatasetError) as e:
            image_folder(folder)
        message = one_line(e)
        assert f"{folder} has no class folders: put each class's images in its own subfolder" in message
        assert holds in message and "does not exist" not in message
    with pytest.raises(DatasetError, match="a.png is a file, not a folder"):
        image_folder(root / "a.png")


def test_check_files_finds_a_bad_file_in_a_split_that_is_not_loaded(tmp_path):
    root = omniglot_folder(tmp_path / "chars", classes=10, per_class=3)
    test_class = Path(root / image_folder(root, "test").class_names[0])
    (test_class / "fake.png").write_text("this is text, not a PNG")
    train = image_folder(root, "train")  # loading a split decodes only its own classes' images...
    assert len(train) > 0
    with pytest.raises(DatasetError) as e:  # ...but the test split would fail after training
        image_folder(root, "test")
    with pytest.raises(DatasetError) as e:
        check_files(root)  # every split's files, before training
    message = one_line(e)
    assert str(test_class / "fake.png") in message and "not a readable image" in message
    (test_class / "fake.png").unlink()
    png = (test_class / "00.png").read_bytes()
    (test_class / "cut.png").write_bytes(png[: len(png) // 2])  # a truncated file: its header is fine
    (test_class / "cut2.png").write_bytes(png[: len(png) // 2])
    for decode in (True, False):
        with pytest.raises(DatasetError, match=r"cut.png is not a readable image.*1 other file"):
            check_files(root, decode=decode)
    (test_class / "cut.png").unlink()
    (test_class / "cut2.png").unlink()
    check_files(root)  # all good now
    check_files(root, ("train",))
    for split, n in (("train", 3), ("test", 2)):  # the train/val/test layout, with no val folder
        omniglot_folder(tmp_path / "parts" / split, classes=n)
    check_files(tmp_path / "parts", ("train", "test"))
    with pytest.raises(DatasetError) as e:
        check_files(tmp_path / "parts")
    assert "has train and test folders but no val folder" in one_line(e)
