"""Small shared pieces: the dataset spec, the dataset error, seed mixing."""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import torch

from ..errors import one_line  # noqa: F401 (data.spec.one_line stays importable)

AUGMENTATIONS = ("none", "standard", "cutout", "random-erasing")
# Where training augmentation runs (``Data(augment_on=...)``): "device" is the
# batched path (aalr_ray.data.device_augment) on the batch's device, "workers"
# the per-example path (aalr_ray.data.augment) in DataLoader workers, "auto"
# the first on an accelerator when the split fits, else the second.
AUGMENT_PLACES = ("auto", "device", "workers")


class DataError(ValueError):
    """A dataset problem the user can fix; the message is always one line.

    Command-line code prints it as ``error: <msg>`` with no traceback, so
    newlines in wrapped exception texts are folded into spaces here. Not cut
    short: the end of a message says what to do (the texts it wraps are).
    """

    def __init__(self, message: object) -> None:
        super().__init__(one_line(message, limit=None))


def check_augment_on(value) -> str:
    """``value`` if it is one of :data:`AUGMENT_PLACES`, else a one-line DataError naming it."""
    if value not in AUGMENT_PLACES:
        raise DataError(f"unknown augment_on {value!r}; choose from {', '.join(AUGMENT_PLACES)}")
    return value


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset.

    ``mean``/``std`` are per channel, of the training inputs as the batches
    deliver them (images in [0, 1]); the model normalises with them.
    ``train_size``/``test_size`` are the sizes actually loaded, i.e. after
    ``smoke``, ``train_limit`` and ``test_limit``.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int


def default_data_dir() -> pathlib.Path:
    """``$AALR_RAY_DATA_DIR``, or ``~/.cache/aalr_ray/data``."""
    env = os.environ.get("AALR_RAY_DATA_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "aalr_ray" / "data"


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of inputs shaped (N, C, ...).

    Inputs shaped (N, F) count as one channel. uint8 images are scaled to
    [0, 1] first, as the batches deliver them.
    """
    xf = x.double()
    if x.dtype == torch.uint8:
        xf = xf / 255.0
    if xf.dim() <= 2:
        flat = xf.reshape(1, -1)
    else:
        flat = xf.transpose(0, 1).reshape(xf.shape[1], -1)
    mean = tuple(round(float(v), 6) for v in flat.mean(dim=1))
    std = tuple(round(float(v), 6) for v in flat.std(dim=1, unbiased=False))
    return mean, std


# --- seed mixing -------------------------------------------------------------
# Every random choice (epoch order, each example's augmentation) gets its own
# seed derived from integers such as (seed, epoch, index). Nothing reads the
# global RNG or a worker's seed, so results do not depend on the process,
# the number of workers, which worker serves an example, or restarts.

_MASK64 = (1 << 64) - 1

# Stream tags keep the permutation and augmentation seeds apart even when the
# other integers coincide.
PERMUTATION_STREAM = 0x7065726D  # "perm"
AUGMENT_STREAM = 0x61756731  # "aug1"
DEVICE_AUGMENT_STREAM = 0x61756732  # "aug2": the batched path's per-batch seeds


def _splitmix64(x: int) -> int:
    # SplitMix64 finaliser (Steele, Lea & Flood 2014): a cheap bijective
    # 64-bit hash with good avalanche, so nearby inputs give unrelated seeds.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the integers ``parts``."""
    h = len(parts)
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1


def generator(*parts: int, device="cpu") -> torch.Generator:
    """A generator on ``device`` (CPU by default) seeded from ``parts`` (see :func:`mix_seed`).

    The same seed gives the same numbers on the same kind of device only:
    CPU, CUDA and MPS generators are different algorithms.
    """
    g = torch.Generator(device=device)
    g.manual_seed(mix_seed(*parts))
    return g
