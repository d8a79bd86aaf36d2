"""An in-memory labelled image dataset: the one shape every data source is turned into.

Images are kept as one ``uint8`` tensor so that training gathers episodes by indexing (no decoding, no Python
per-item work), and so that a dataset can be cached to disk as a single file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset


class ClassDataset(Dataset):
    """Labelled images held in memory.

    Args:
        images: ``uint8`` tensor, shape ``(n, channels, height, width)``; 0 is background, 255 full intensity.
        labels: class id of every image, shape ``(n,)``, values ``0..len(class_names)-1``.
        class_names: a readable name per class (e.g. ``"Greek/character01/rot090"``).

    Items are ``(image, label)`` with the image as ``float32`` in ``[0, 1]``; :meth:`gather` does the same for a
    whole index tensor at once.
    """

    def __init__(self, images: Tensor, labels: Tensor, class_names: Sequence[str]) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (n, c, h, w), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.class_names = list(class_names)
        if len(self.labels) and int(self.labels.max()) >= len(self.class_names):
            raise ValueError("a label is larger than the number of class names")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i].float().div_(255.0), self.labels[i]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def gather(self, idx: Tensor) -> Tensor:
        """Images at ``idx`` as ``float32`` in ``[0, 1]``, shape ``(*idx.shape, c, h, w)``."""
        return self.images[idx].float().div_(255.0)

    def subset(self, keep: Tensor) -> ClassDataset:
        """The images where the boolean mask ``keep`` is true (class ids and names unchanged)."""
        return ClassDataset(self.images[keep], self.labels[keep], self.class_names)

    def with_rotations(self) -> ClassDataset:
        """Every class plus its images turned by 90, 180 and 270 degrees counter-clockwise as three new classes
        (Vinyals et al. 2016's class augmentation, as the Vinyals Omniglot split has it), named ``NAME/rot090``
        and so on (``NAME/rot000`` for the originals); class ``k`` turned ``r`` quarter turns is ``4 k + r``."""
        n = len(self.class_names)
        images = torch.cat([torch.rot90(self.images, r, dims=(-2, -1)) for r in range(4)])
        labels = torch.cat([4 * self.labels + r for r in range(4)])
        names = [f"{name}/rot{90 * r:03d}" for name in self.class_names for r in range(4)]
        assert len(names) == 4 * n
        return ClassDataset(images, labels, names)

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return f"ClassDataset({len(self)} images of {c}x{h}x{w}, {self.num_classes} classes)"
