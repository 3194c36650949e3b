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
the recipes, their sources and which dataset accepts which. They run in one
of two places (``augment_on``, :data:`AUGMENT_PLACES`): per example in
DataLoader workers (:mod:`~aalr_ray.data.augment`, "workers"), or as
whole-batch tensor ops on the batch's device with the uint8 training split
resident there (:mod:`~aalr_ray.data.device_augment`, "device"). The two
give batches equal in distribution, not the same numbers; "auto" (the
default) takes the device on an accelerator when the split fits and the
workers on a CPU, so CPU runs are what they were before the device path
(see :mod:`aalr_ray.data.batching`).

Determinism: the order and augmentation of an epoch depend only on
``(seed, epoch)`` (and, on the device path, the batch size and the kind of
device), never on global RNG state, workers or restarts.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

from .augment import VALID_AUGMENTATIONS, Augmenter
from .batching import Data, default_num_workers
from .sources import (
    SMOKE_TEST,
    SMOKE_TRAIN,
    TORCHVISION,
    Split,
    load_digits,
    load_factory,
    load_mnist1d,
    load_synthetic,
    load_torchvision,
    synthetic_images,
)
from .spec import (
    AUGMENT_PLACES,
    AUGMENTATIONS,
    DataError,
    DatasetSpec,
    channel_stats,
    check_augment_on,
    default_data_dir,
)

__all__ = [
    "AUGMENT_PLACES",
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


def _check_request(name: str, augmentation: str) -> None:
    """DataError unless ``name`` is a known dataset (or a factory path) that takes ``augmentation``."""
    if augmentation not in AUGMENTATIONS:
        raise DataError(f"unknown augmentation {augmentation!r}; choose from {', '.join(AUGMENTATIONS)}")
    if ":" not in name and name not in _NAMES:
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


@dataclass
class _Loaded:
    """Both splits as loaded, with what the source fixes: the class count and the channel statistics."""

    train: Split
    test: Split
    num_classes: int = 10  # mnist1d, digits, synthetic
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # None: measured on train


def _load_splits(name: str, root: pathlib.Path, download: bool, smoke: bool) -> _Loaded:
    if ":" in name:
        made = load_factory(name, root)
        return _Loaded(made.train, made.test, made.num_classes)
    if name in TORCHVISION:
        info = TORCHVISION[name]
        if smoke:  # no files needed: a synthetic stand-in of the same shape, classes and statistics
            train, test = synthetic_images(
                SMOKE_TRAIN, SMOKE_TEST, info.num_classes, info.input_shape, info.mean, info.std, _SMOKE_SEED
            )
        else:
            train, test = load_torchvision(name, root, download)
        return _Loaded(train, test, info.num_classes, (info.mean, info.std))
    if name == "mnist1d":
        return _Loaded(*load_mnist1d(root))
    if name == "digits":
        return _Loaded(*load_digits())
    return _Loaded(*load_synthetic())


def _first(split: Split, limit: int | None) -> Split:
    return split if limit is None else (split[0][:limit], split[1][:limit])


def _spec(name: str, loaded: _Loaded) -> DatasetSpec:
    mean, std = loaded.stats if loaded.stats is not None else channel_stats(loaded.train[0])
    return DatasetSpec(
        name=name,
        num_classes=loaded.num_classes,
        input_shape=tuple(int(s) for s in loaded.train[0].shape[1:]),
        mean=tuple(mean),
        std=tuple(std),
        train_size=len(loaded.train[1]),
        test_size=len(loaded.test[1]),
    )


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
    augment_on: str = "auto",
) -> Data:
    """Load a dataset by name, or from a ``package.module:function`` factory.

    ``smoke=True`` replaces torchvision sets by a small synthetic set with the
    same shape, classes and mean/std (no files needed) and cuts the others to
    the first examples (``SMOKE_TRAIN`` = 256 train / ``SMOKE_TEST`` = 128 test).
    ``train_limit``/``test_limit`` keep only the first N examples of a split.
    ``num_workers`` sets the DataLoader workers used for augmented training
    batches (default: :func:`default_num_workers`); ``augment_on`` where
    they are augmented: "auto", "device" or "workers" (:data:`AUGMENT_PLACES`).
    Raises :class:`DataError` (one line) on any problem the user can fix.
    """
    _check_request(name, augmentation)
    check_augment_on(augment_on)
    train_limit = _limit(train_limit, "train_limit")
    test_limit = _limit(test_limit, "test_limit")
    root = pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()
    loaded = _load_splits(name, root, download, smoke)
    if smoke:
        train_limit = min(train_limit or SMOKE_TRAIN, SMOKE_TRAIN)
        test_limit = min(test_limit or SMOKE_TEST, SMOKE_TEST)
    loaded.train, loaded.test = _first(loaded.train, train_limit), _first(loaded.test, test_limit)
    spec = _spec(name, loaded)
    augmenter = None if augmentation == "none" else Augmenter(augmentation, name, spec.mean)
    return Data(spec, loaded.train, loaded.test, augmentation=augmentation, augmenter=augmenter,
                num_workers=num_workers, augment_on=augment_on)
