"""Datasets for AALR experiments: one loader, deterministic batches.

Usage::

    data = load_dataset("cifar10", augmentation="standard")
    data.spec                     # DatasetSpec: classes, input shape, mean/std, sizes
    for x, y in data.batches("train", 128, seed=0, epoch=3, device="cuda"):
        ...

Built-in datasets (:func:`dataset_names`):

``cifar10``, ``cifar100``, ``fashion-mnist``
    torchvision files in ``data_dir`` (downloaded when ``download=True`` and
    online; otherwise a one-line :class:`DataError` says what to put where).
    Kept in memory as uint8; batches are float32 in [0, 1].
``digits``
    sklearn's bundled 8x8 digits, 1437 train / 360 test (fixed stratified
    split), in [0, 1]; never downloaded.
``mnist1d``
    MNIST-1D generated locally, 4000 / 1000, input (1, 40); cached in
    ``data_dir``. Its features are standardised, not in [0, 1] ("[0, 1]"
    applies to images).
``synthetic``
    2048 / 512 deterministic 3x32x32 images in 10 learnable classes; a
    CIFAR-10 stand-in for tests (all augmentations).

Any ``package.module:function`` returning ``(train, test)`` also works; see
:func:`aalr_ray.data.sources.load_factory`.

Augmentations (training split only): see :mod:`aalr_ray.data.augment` for
the recipes, their sources and which dataset accepts which.

Determinism: the order and augmentation of an epoch depend only on
``(seed, epoch)``, never on global RNG state, workers or restarts.
"""
from __future__ import annotations

import pathlib

from .augment import VALID_AUGMENTATIONS, Augmenter
from .batching import Data, default_num_workers
from .sources import (
    SMOKE_TEST,
    SMOKE_TRAIN,
    TORCHVISION,
    load_digits,
    load_factory,
    load_mnist1d,
    load_synthetic,
    load_torchvision,
    synthetic_images,
)
from .spec import AUGMENTATIONS, DataError, DatasetSpec, channel_stats, default_data_dir

__all__ = [
    "AUGMENTATIONS",
    "builtin_input_shape",
    "Data",
    "DataError",
    "DatasetSpec",
    "dataset_names",
    "default_data_dir",
    "default_num_workers",
    "load_dataset",
    "valid_augmentations",
]

_NAMES = ("cifar10", "cifar100", "digits", "fashion-mnist", "mnist1d", "synthetic")
_SMOKE_SEED = 1  # the smoke stand-ins differ from ``synthetic`` on purpose


def dataset_names() -> list[str]:
    """The built-in dataset names (a ``package.module:function`` also works)."""
    return list(_NAMES)


def builtin_input_shape(name: str) -> tuple[int, ...] | None:
    """One example's shape for a built-in dataset, without loading it (None for factories)."""
    if name in TORCHVISION:
        return tuple(TORCHVISION[name].input_shape)
    return {"mnist1d": (1, 40), "digits": (1, 8, 8), "synthetic": (3, 32, 32)}.get(name)


def valid_augmentations(name: str) -> tuple[str, ...]:
    """The augmentations ``name`` accepts ("none" only for factories)."""
    return VALID_AUGMENTATIONS.get(name, ("none",))


def _limit(value, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{what} must be a positive integer, got {value!r}")
    return value


def load_dataset(
    name: str,
    *,
    data_dir=None,
    augmentation: str = "none",
    download: bool = True,
    smoke: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    num_workers: int | None = None,
) -> Data:
    """Load a dataset by name, or from a ``package.module:function`` factory.

    ``smoke=True`` replaces torchvision sets by a small synthetic set with the
    same shape, classes and mean/std (no files needed) and cuts the others to
    the first examples (``SMOKE_TRAIN`` = 256 train / ``SMOKE_TEST`` = 128 test).
    ``train_limit``/``test_limit`` keep only the first N examples of a split.
    ``num_workers`` sets the DataLoader workers used for augmented training
    batches (default: :func:`default_num_workers`).
    Raises :class:`DataError` (one line) on any problem the user can fix.
    """
    if augmentation not in AUGMENTATIONS:
        raise DataError(f"unknown augmentation {augmentation!r}; choose from {', '.join(AUGMENTATIONS)}")
    is_factory = ":" in name
    if not is_factory and name not in _NAMES:
        raise DataError(
            f"unknown dataset {name!r}; choose from {', '.join(_NAMES)} "
            f"or give a 'package.module:function' factory"
        )
    valid = valid_augmentations(name)
    if augmentation not in valid:
        raise DataError(
            f"augmentation {augmentation!r} is not supported for dataset {name!r}; "
            f"choose from {', '.join(valid)}"
        )
    train_limit = _limit(train_limit, "train_limit")
    test_limit = _limit(test_limit, "test_limit")
    root = pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()

    num_classes, fixed_stats = None, None
    if is_factory:
        made = load_factory(name, root)
        train, test, num_classes = made.train, made.test, made.num_classes
    elif name in TORCHVISION:
        info = TORCHVISION[name]
        num_classes, fixed_stats = info.num_classes, (info.mean, info.std)
        if smoke:
            train, test = synthetic_images(
                SMOKE_TRAIN, SMOKE_TEST, info.num_classes, info.input_shape, info.mean, info.std, _SMOKE_SEED
            )
        else:
            train, test = load_torchvision(name, root, download)
    elif name == "mnist1d":
        train, test = load_mnist1d(root)
    elif name == "digits":
        train, test = load_digits()
    else:
        train, test = load_synthetic()

    if smoke:
        train_limit = min(train_limit or SMOKE_TRAIN, SMOKE_TRAIN)
        test_limit = min(test_limit or SMOKE_TEST, SMOKE_TEST)
    if train_limit is not None:
        train = (train[0][:train_limit], train[1][:train_limit])
    if test_limit is not None:
        test = (test[0][:test_limit], test[1][:test_limit])

    if num_classes is None:  # mnist1d, digits, synthetic
        num_classes = 10
    mean, std = fixed_stats if fixed_stats is not None else channel_stats(train[0])
    spec = DatasetSpec(
        name=name,
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in train[0].shape[1:]),
        mean=tuple(mean),
        std=tuple(std),
        train_size=len(train[1]),
        test_size=len(test[1]),
    )
    augmenter = None if augmentation == "none" else Augmenter(augmentation, name, spec.mean)
    return Data(spec, train, test, augmentation=augmentation, augmenter=augmenter, num_workers=num_workers)
