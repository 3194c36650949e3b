"""Training augmentation of a whole batch at once, on the batch's device.

The recipes of :mod:`aalr_ray.data.augment` (``standard``, ``cutout``,
``random-erasing``; their constants and sources are there and imported
here) as a few whole-batch tensor ops: a GPU augments a batch in a dozen
kernels instead of a Python call per image in CPU workers, and the uint8
split never leaves the device.

Randomness
----------
One generator per batch, on the batch's device, seeded from
``(seed, epoch, batch index)`` (:func:`batch_generator`). Every random
choice is drawn for all examples at once, one tensor per choice, in a fixed
order: crop rows, crop columns, flips, then the cutout centres or the
erasing draws. So a batch is a pure function of (seed, epoch, batch index,
batch contents) on a given kind of device, whatever was asked for before.

Method, and why it has the per-example distribution
----------------------------------------------------
Per example (``augment.py``), each choice is drawn from a fixed law,
independently of the other examples. Here each choice is a tensor of
independent draws from the same law, one per example, and the image
operations applied with them give exactly the per-example result for the
same choices:

``standard``
    Output pixel (i, j) of example b reads source pixel
    (i + top_b, j' + left_b), with j' = W - 1 - j if b is flipped, else j,
    and top_b, left_b uniform in [-p, p]: that is padding by p, cropping at
    (top_b + p, left_b + p), then flipping. Two gathers read it; a mask zeroes
    the sources that fall in the padding. The values are copies, so for the
    same draws they equal the per-example path's bit for bit.
``cutout``
    Centres uniform over the image; the patch is the broadcast comparison of
    the row and column grids with [c - L/2, c + L/2), which clips at the
    border by itself (grid coordinates outside the image do not exist).
``random-erasing``
    The per-example code draws (area fraction, aspect) up to 100 times and
    uses the first draw whose rectangle fits. Here all 100 candidates are
    drawn up front (a (B, 100) tensor each) and the first that fits is
    taken. The candidates are independent of each other and of everything
    else, and the candidates after the first fitting one are never looked
    at, so the first fitting candidate (and "none fits", probability
    (1 - q)^100) has the same law whether the later ones are drawn or not.
    The arithmetic is augment.random_erasing's: float32 uniforms widened to
    float64 (float32 on MPS, which has no float64), ``round`` half to even.
    Given the chosen height and width, the position is uniform over the
    H - h + 1 rows and W - w + 1 columns: a random 62-bit integer modulo
    that count (a bias of count / 2^62, i.e. none measurable). The fill is
    one independent uniform [0, 1) value per pixel and channel.

The numbers themselves differ from the per-example path's (other
generators, other draw order): batches are equal in distribution, not bit
for bit; tests/test_device_augment.py checks that with chi-square tests.
Input is uint8 (N, C, H, W) (or float, used as is); output float32 in
[0, 1] for uint8 input, like the per-example path.
"""
from __future__ import annotations

import torch

from .augment import (
    CROP_PADDING,
    ERASING_AREA,
    ERASING_ATTEMPTS,
    ERASING_MIN_ASPECT,
    ERASING_PROBABILITY,
    FLIP_PROBABILITY,
    Augmenter,
)
from .spec import DEVICE_AUGMENT_STREAM, generator

__all__ = ["BatchAugmenter", "batch_generator", "cutout", "pad_crop_flip", "random_erasing"]

_POSITION_BITS = 62  # random integers below 2^62, reduced modulo a count (see the docstring)


def batch_generator(device, seed: int, epoch: int, batch_index: int) -> torch.Generator:
    """The generator of one batch on ``device``: a pure function of (seed, epoch, batch index)."""
    return generator(seed, epoch, batch_index, DEVICE_AUGMENT_STREAM, device=device)


def _below(count: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One uniform integer in [0, count[k]) per entry of the int64 tensor ``count``."""
    bits = torch.randint(1 << _POSITION_BITS, count.shape, generator=g, device=count.device)
    return bits % count


def _real_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def pad_crop_flip(x: torch.Tensor, padding: int, flip_p: float, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding``, crop the original size at a random offset, flip with ``flip_p``.

    ``x`` is (B, C, H, W) of any dtype; the result is a new tensor of that dtype.
    """
    b, c, h, w = x.shape
    dev = x.device
    top = torch.randint(2 * padding + 1, (b,), generator=g, device=dev) - padding
    left = torch.randint(2 * padding + 1, (b,), generator=g, device=dev) - padding
    flip = torch.rand(b, generator=g, device=dev) < flip_p
    rows = torch.arange(h, device=dev) + top[:, None]  # (B, H): the source row of each output row
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], (w - 1) - cols, cols) + left[:, None]  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    out = x.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w))
    return torch.where(inside[:, None], out, torch.zeros((), dtype=x.dtype, device=dev))


def _box(top, height, left, width, h: int, w: int) -> torch.Tensor:
    """(B, H, W) masks of the boxes rows [top, top + height) x columns [left, left + width)."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def cutout(x: torch.Tensor, length: int, fill: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Fill one ``length`` x ``length`` square per image (clipped at the border) with ``fill`` (C, 1, 1)."""
    b, _, h, w = x.shape
    cy = torch.randint(h, (b,), generator=g, device=x.device)
    cx = torch.randint(w, (b,), generator=g, device=x.device)
    half = length // 2
    mask = _box(cy - half, 2 * half, cx - half, 2 * half, h, w)
    return torch.where(mask[:, None], fill, x)


def _erasing_sizes(b: int, h: int, w: int, g: torch.Generator, device) -> tuple[torch.Tensor, ...]:
    """(height, width, found) of each image's first fitting candidate rectangle out of
    ERASING_ATTEMPTS; height and width are 1 where none fits (``found`` False)."""
    real = _real_dtype(device)
    draws = torch.rand((2, b, ERASING_ATTEMPTS), generator=g, device=device).to(real)
    low, high = ERASING_AREA
    area = (low + (high - low) * draws[0]) * (h * w)
    aspect = ERASING_MIN_ASPECT + (1.0 / ERASING_MIN_ASPECT - ERASING_MIN_ASPECT) * draws[1]
    heights = torch.round(torch.sqrt(area * aspect)).long()
    widths = torch.round(torch.sqrt(area / aspect)).long()
    fits = (heights > 0) & (heights < h) & (widths > 0) & (widths < w)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first True (argmax returns the first maximum)
    found = fits.any(dim=1)
    height = torch.where(found, heights.gather(1, first).squeeze(1), 1)
    width = torch.where(found, widths.gather(1, first).squeeze(1), 1)
    return height, width, found


def random_erasing(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random Erasing (Zhong et al. 2017) of a float batch (B, C, H, W); see the module docstring."""
    b, _, h, w = x.shape
    apply = torch.rand(b, generator=g, device=x.device) < ERASING_PROBABILITY
    height, width, found = _erasing_sizes(b, h, w, g, x.device)
    top = _below(h - height + 1, g)
    left = _below(w - width + 1, g)
    noise = torch.rand(x.shape, generator=g, device=x.device)
    mask = _box(top, height, left, width, h, w) & (apply & found)[:, None, None]
    return torch.where(mask[:, None], noise, x)


class BatchAugmenter:
    """An :class:`~aalr_ray.data.augment.Augmenter`'s recipe, applied to whole batches."""

    def __init__(self, augmenter: Augmenter) -> None:
        self.augmentation = augmenter.augmentation
        self.cutout_length = augmenter.cutout_length
        self.fill = augmenter.fill  # (C, 1, 1) float32 on the CPU
        self._fills: dict[torch.device, torch.Tensor] = {}  # ``fill`` on each device used

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """``images`` (B, C, H, W), uint8 or float, augmented with draws from ``g`` (on their device)."""
        x = pad_crop_flip(images, CROP_PADDING, FLIP_PROBABILITY, g)
        # After the crop: moving bytes is cheaper than floats, and the values are the same.
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.augmentation == "cutout":
            x = cutout(x, self.cutout_length, self._fill_on(x.device), g)
        elif self.augmentation == "random-erasing":
            x = random_erasing(x, g)
        return x

    def _fill_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._fills:
            self._fills[device] = self.fill.to(device)
        return self._fills[device]

    def __repr__(self) -> str:
        return f"BatchAugmenter({self.augmentation!r}, cutout_length={self.cutout_length})"
