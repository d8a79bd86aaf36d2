"""Training-time image augmentation for the image benchmarks, on whole batches and with an explicit generator.

The usual few-shot recipe (MetaOptNet, Lee et al. 2019, and the many works that reuse its loaders) is
``RandomCrop(s, padding=p)``, ``ColorJitter(0.4, 0.4, 0.4)`` and ``RandomHorizontalFlip()`` with p = 4 for
32x32 CIFAR images and p = 8 for 84x84 ImageNet images. :func:`augment` does the same on a float tensor of
many images at once: every random number comes from the ``generator`` passed in (never the global RNG), so
an episode's augmentation is fixed by that generator's state, and no Python loop runs per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R 601-2 luma weights, as in PIL's convert("L") and torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


def augment(
    images: Tensor,
    generator: torch.Generator,
    crop_padding: int | None = None,
    flip: bool = True,
    jitter: float = 0.4,
) -> Tensor:
    """Random crop after zero padding, horizontal flip and colour jitter, each image drawn independently.

    The steps run in this order: crop, flip, then brightness, contrast and saturation (torchvision's
    ``ColorJitter`` shuffles those three per image; a fixed order keeps the batch vectorised).

    Args:
        images: float images in ``[0, 1]``, shape ``(n, c, h, w)``, ``c`` = 1 or 3.
        generator: the source of every random draw (its device is where the draws are made).
        crop_padding: zeros added on each side before cropping back to ``h x w`` at a random offset; ``None``
            -> 4 for images up to 32 pixels, 8 above (MetaOptNet's 32x32 and 84x84 settings); 0 = no crop.
        flip: mirror each image left-right with probability 1/2.
        jitter: brightness, contrast and saturation factors are drawn uniformly from
            ``[1 - jitter, 1 + jitter]`` per image (0 = no colour change; saturation only for ``c == 3``).

    Returns:
        Augmented images, same shape, dtype and device as ``images``, values in ``[0, 1]``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> augment(torch.rand(25, 3, 84, 84), g).shape
        torch.Size([25, 3, 84, 84])
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float (n, c, h, w), got {images.dtype} {tuple(images.shape)}")
    n, c, h, w = images.shape
    pad = (4 if max(h, w) <= 32 else 8) if crop_padding is None else crop_padding
    if pad < 0:
        raise ValueError(f"crop_padding must be >= 0, got {pad}")
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")
    device = images.device

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=generator.device).to(device)

    x = images
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))  # (n, c, h + 2p, w + 2p), zeros around
        offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=generator.device).to(
            device
        )
        rows = offsets[0, :, None] + torch.arange(h, device=device)  # (n, h)
        cols = offsets[1, :, None] + torch.arange(w, device=device)  # (n, w)
        batch = torch.arange(n, device=device)[:, None, None, None]
        channel = torch.arange(c, device=device)[None, :, None, None]
        x = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]  # (n, c, h, w)
    if flip:
        mirrored = uniform(n) < 0.5
        x = torch.where(mirrored[:, None, None, None], x.flip(-1), x)
    if jitter > 0:
        brightness, contrast, saturation = (1 + jitter * (2 * uniform(3, n) - 1))[..., None, None, None]
        x = (x * brightness).clamp(0, 1)
        mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)  # (n, 1, 1, 1): contrast pivots on mean grey
        x = ((x - mean) * contrast + mean).clamp(0, 1)
        if c == 3:
            gray = _gray(x)  # (n, 1, h, w)
            x = ((x - gray) * saturation + gray).clamp(0, 1)
    return x


def _gray(x: Tensor) -> Tensor:
    """Luma of ``(n, c, h, w)`` images, shape ``(n, 1, h, w)`` (the image itself when ``c == 1``)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)
