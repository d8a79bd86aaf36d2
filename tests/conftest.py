"""Shared fixtures: small synthetic datasets that every test can afford."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewshot.datasets.base import ClassDataset


def make_blobs(classes: int = 12, per_class: int = 10, size: int = 28, noise: float = 40.0, seed: int = 0):
    """Images that are a class template plus noise: learnable, tiny, deterministic."""
    g = torch.Generator().manual_seed(seed)
    # smooth templates (random 4x4 patterns, upsampled): spatial structure a conv net can transfer
    coarse = torch.rand(classes, 1, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear") * 255
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = templates[labels] + noise * torch.randn(len(labels), 1, size, size, generator=g)
    images = images.clamp(0, 255).to(torch.uint8)
    return ClassDataset(images, labels, [f"class{c:02d}" for c in range(classes)])


def write_image_folder(root: Path, classes: int = 15, per_class: int = 6, seed: int = 7) -> Path:
    """:func:`make_blobs` as a folder of PNG files, one subfolder per class (``c00``, ``c01``, ...)."""
    from PIL import Image

    blobs = make_blobs(classes=classes, per_class=per_class, seed=seed)
    for i, (img, y) in enumerate(zip(blobs.images, blobs.labels.tolist(), strict=True)):
        folder = root / f"c{y:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def blobs() -> ClassDataset:
    return make_blobs()


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread (and do not fight other work for the second core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def resume_ends_where_one_go_does(config, root: Path, stop_at: int):
    """Trains ``config`` in one go, and again stopped after step ``stop_at`` (as if killed after that step's log)
    then resumed: asserts both end with the same weights, bit for bit; returns the resumed trainer."""
    import dataclasses

    from fewshot.train import Trainer

    whole = Trainer(config, root / "whole", progress=False)
    whole.run()
    half = Trainer(config, root / "half", progress=False)
    half.config = dataclasses.replace(config, steps=stop_at)
    half.run()
    resumed = Trainer(
        config, root / "half", progress=False, resume=True
    )  # the full length, from the resume point
    resumed.run()
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    return resumed
