"""Your own data: image folders and tables through the same episode machinery, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.cli import main
from fewshot.datasets.folder import image_folder, table_dataset
from fewshot.datasets.storage import DatasetError
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
