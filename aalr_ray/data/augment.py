"""Training augmentations as pure functions of (image, generator).

torchvision's transforms draw from the global RNG; wrapping each call in
``fork_rng`` + ``manual_seed`` would work but costs a state save/restore per
example, and torchvision's RandomErasing defaults differ from the paper
(scale up to 0.33 instead of 0.4, log-uniform aspect, fill 0). So each step
here is a few lines taking an explicit ``torch.Generator``; the draws happen
in a fixed order (crop row, crop column, flip, then cutout or erasing), which
makes an example's augmentation a pure function of its generator's seed.

Images are float32 (C, H, W) in [0, 1]; the model normalises later.

Choices and sources
-------------------
``standard``
    CIFAR: 4-pixel zero padding + random 32x32 crop + horizontal flip with
    p = 0.5 (He et al. 2016, Sec. 4.2; also the Cutout and Random Erasing
    papers' baseline). Fashion-MNIST: the same with a 28x28 crop, as in the
    Random Erasing authors' Fashion-MNIST script (github.com/zhunzhong07/
    Random-Erasing, fashionmnist.py: RandomCrop(28, padding=4) +
    RandomHorizontalFlip).
``cutout``
    standard + one square patch (DeVries & Taylor 2017): side 16 on CIFAR-10,
    8 on CIFAR-100 (the paper's chosen lengths, also in its README commands);
    the centre is uniform over the whole image and the square is clipped at
    the border. The reference code masks *after* per-channel normalisation,
    so the patch becomes the dataset mean; since our inputs stay in [0, 1]
    and the model normalises, the patch is filled with the per-channel mean,
    which is exactly 0 after the model's normalisation. No length was
    published for Fashion-MNIST, so that pair is refused.
``random-erasing``
    standard + Random Erasing (Zhong et al. 2017) with the paper's defaults:
    p = 0.5, area fraction uniform in [0.02, 0.4], aspect ratio uniform in
    [0.3, 1/0.3], rectangle position uniform among the positions that fit,
    up to 100 tries as in the authors' code; each erased pixel gets an
    independent uniform random value (the paper's "RE-R", its best variant;
    [0, 255] in the paper is [0, 1] here).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CROP_PADDING = 4  # He et al. 2016; Zhong et al. 2017 (Fashion-MNIST script)
FLIP_PROBABILITY = 0.5
CUTOUT_LENGTH = {"cifar10": 16, "cifar100": 8, "synthetic": 16}  # DeVries & Taylor 2017
ERASING_PROBABILITY = 0.5  # Zhong et al. 2017, default setting
ERASING_AREA = (0.02, 0.4)  # s_l, s_h
ERASING_MIN_ASPECT = 0.3  # r_1; aspect in [r_1, 1/r_1]
ERASING_ATTEMPTS = 100  # the authors' code retries up to 100 times

# Which augmentations each built-in dataset accepts. ``synthetic`` stands in
# for CIFAR-10 in tests, so it takes everything. 1-D and 8x8 inputs have no
# published augmentation recipe: "none" only.
VALID_AUGMENTATIONS = {
    "cifar10": ("none", "standard", "cutout", "random-erasing"),
    "cifar100": ("none", "standard", "cutout", "random-erasing"),
    "synthetic": ("none", "standard", "cutout", "random-erasing"),
    "fashion-mnist": ("none", "standard", "random-erasing"),
    "digits": ("none",),
    "mnist1d": ("none",),
}


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=g))


def pad_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad every side by ``padding`` and cut a random crop of the original size."""
    _, h, w = x.shape
    top = _randint(g, 2 * padding + 1)
    left = _randint(g, 2 * padding + 1)
    padded = F.pad(x, (padding, padding, padding, padding))
    return padded[:, top : top + h, left : left + w]


def hflip(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    if float(torch.rand((), generator=g)) < p:
        return x.flip(-1)
    return x


def cutout(x: torch.Tensor, length: int, fill: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Fill one ``length`` x ``length`` square (clipped at the border) with ``fill``.

    ``x`` is modified in place and returned; ``fill`` is (C, 1, 1).
    """
    _, h, w = x.shape
    cy, cx = _randint(g, h), _randint(g, w)
    half = length // 2
    y0, y1 = max(cy - half, 0), min(cy + half, h)
    x0, x1 = max(cx - half, 0), min(cx + half, w)
    x[:, y0:y1, x0:x1] = fill
    return x


def random_erasing(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random Erasing (Zhong et al. 2017), in place; see the module docstring."""
    if float(torch.rand((), generator=g)) >= ERASING_PROBABILITY:
        return x
    c, h, w = x.shape
    for _ in range(ERASING_ATTEMPTS):
        area = _uniform(g, *ERASING_AREA) * h * w
        aspect = _uniform(g, ERASING_MIN_ASPECT, 1.0 / ERASING_MIN_ASPECT)
        eh = int(round(math.sqrt(area * aspect)))
        ew = int(round(math.sqrt(area / aspect)))
        if 0 < eh < h and 0 < ew < w:
            top = _randint(g, h - eh + 1)
            left = _randint(g, w - ew + 1)
            x[:, top : top + eh, left : left + ew] = torch.rand((c, eh, ew), generator=g)
            return x
    return x


class Augmenter:
    """One dataset's training augmentation; picklable, so it can live in workers."""

    def __init__(self, augmentation: str, dataset: str, mean: tuple[float, ...]) -> None:
        self.augmentation = augmentation
        self.cutout_length = CUTOUT_LENGTH.get(dataset, 0) if augmentation == "cutout" else 0
        self.fill = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
        x = pad_crop(x, CROP_PADDING, g)
        x = hflip(x, FLIP_PROBABILITY, g).contiguous()
        if self.augmentation == "cutout":
            x = cutout(x, self.cutout_length, self.fill, g)
        elif self.augmentation == "random-erasing":
            x = random_erasing(x, g)
        return x

    def __repr__(self) -> str:
        return f"Augmenter({self.augmentation!r}, cutout_length={self.cutout_length})"
