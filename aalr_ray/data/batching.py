"""The :class:`Data` object: deterministic, device-aware batches.

Three paths, all driven by the same epoch order (:func:`epoch_order`):

* Direct indexing (test split, and training without augmentation): the whole
  split is moved to the device once and cached, and each batch is one index
  op (plus a uint8 -> float conversion on the device for images). No workers:
  a GPU epoch is not bounded by host copies or per-example Python.
* Batched augmentation on the device (training with augmentation, augment_on
  "device", or "auto" on an accelerator): the training split stays resident
  on the device as uint8, like the direct path's, and each batch is one index
  op plus :class:`~aalr_ray.data.device_augment.BatchAugmenter`, whose draws
  come from a generator on the device seeded by (seed, epoch, batch index).
* DataLoader (training with augmentation, augment_on "workers", or "auto" on
  a CPU or when the split does not fit): per-example augmentation runs in
  worker processes. The sampler yields ``(index, seed, epoch)`` keys and the
  dataset seeds a fresh generator from them, so the result does not depend on
  the worker count, on which worker serves an example, or on restarts; and it
  works with ``persistent_workers=True`` because the key, not worker state,
  carries the epoch.

The two augmenting paths give batches equal in distribution, not the same
numbers. "auto" keeps the workers on a CPU: CPU experiments started before
the batched path existed resume bit for bit, and a CPU epoch overlaps
augmentation in workers with the training step. On an accelerator it takes
the batched path when the uint8 training split fits: its bytes under
:data:`RESIDENT_FRACTION` of the free device memory (CUDA: what the driver
reports free plus what torch's allocator holds unused; MPS: the recommended
maximum less what is allocated), leaving the rest to the model and its
activations; where torch cannot tell the free memory, it assumes the split
fits. The choice is made once per device and kept, so a run never switches
paths when the model's memory grows. Where a run resumed on a machine with
other free memory must continue bit for bit, pin "device" or "workers".
"""
from __future__ import annotations

import math
import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import Augmenter
from .device_augment import BatchAugmenter, batch_generator
from .spec import AUGMENT_STREAM, PERMUTATION_STREAM, DataError, DatasetSpec, check_augment_on, generator

SPLITS = ("train", "test")
ACCELERATORS = ("cuda", "mps")  # where augment_on="auto" may choose the batched device path
RESIDENT_FRACTION = 0.25  # "fits": the uint8 training split takes under this share of free device memory


def default_num_workers() -> int:
    """Worker processes for augmented training batches.

    0 on machines with at most 2 usable cores. Measured on a 2-core machine,
    one thread, CIFAR-sized images, batch 128 (seconds per 50k images,
    standard / cutout / random-erasing): in-process 3.2 / 4.1 / 4.2, one
    worker 3.9 / 5.1 / 5.2 (IPC costs more than it overlaps), two workers
    2.1 / 2.7 / 2.8 but only with both cores idle, i.e. taken from the
    training step. Otherwise min(4, cores - 1), leaving a core to the
    training loop; at ~70 us per augmented image, 4 workers produce a CIFAR
    epoch in about a second.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores - 1)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The example order of one epoch: a pure function of (n, seed, epoch, shuffle)."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=generator(seed, epoch, PERMUTATION_STREAM))


class _KeySampler(Sampler):
    """Yields ``(index, seed, epoch)`` for the order set just before each epoch."""

    def __init__(self) -> None:
        self.order = torch.arange(0)
        self.seed = 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        seed, epoch = self.seed, self.epoch
        return ((i, seed, epoch) for i in self.order.tolist())


class _AugmentedImages(Dataset):
    """Training examples augmented from a generator seeded by their key."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: Augmenter) -> None:
        self.x, self.y, self.augment = x, y, augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int, int]):
        index, seed, epoch = key
        g = generator(seed, epoch, index, AUGMENT_STREAM)
        return self.augment(self.x[index], g), self.y[index]


def free_device_memory(device: torch.device) -> int | None:
    """Bytes torch can still allocate on ``device``; None where it cannot tell (CPU)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    return None


def _device(device) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


class Data:
    """A loaded dataset: its :class:`DatasetSpec` and deterministic batches.

    Built by :func:`aalr_ray.data.load_dataset`. Inputs are float32; images
    are in [0, 1] (MNIST-1D and tensor factories keep their own scale).
    ``num_workers`` (augmented training only) can be changed before the
    first augmented epoch; see :func:`default_num_workers`. ``augment_on``
    (one of ``AUGMENT_PLACES``) picks where augmentation runs; see the
    module docstring.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        train: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor],
        *,
        augmentation: str = "none",
        augmenter: Augmenter | None = None,
        num_workers: int | None = None,
        augment_on: str = "auto",
    ) -> None:
        self.spec = spec
        self.augmentation = augmentation
        self.augment_on = check_augment_on(augment_on)
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        self._splits = {"train": train, "test": test}
        self._augmenter = augmenter
        self._device_cache: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self._loaders: dict[tuple[int, bool], DataLoader] = {}
        self._active: dict[tuple[int, bool], object] = {}
        # augment_on="auto"'s choice per device, made at its first augmented epoch:
        # True for the batched device path.
        self._on_device: dict[torch.device, bool] = {}

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"Data({s.name!r}, train={s.train_size}, test={s.test_size}, "
            f"augmentation={self.augmentation!r}, augment_on={self.augment_on!r}, "
            f"num_workers={self.num_workers})"
        )

    # Device copies, worker pools and the free-memory choice are per process: never pickle them.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_device_cache"], state["_loaders"], state["_active"], state["_on_device"] = {}, {}, {}, {}
        return state

    def close(self) -> None:
        """Shut down worker processes and drop device copies."""
        self._loaders.clear()
        self._active.clear()
        self._device_cache.clear()

    def _check(self, split: str, batch_size: int) -> int:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        return len(self._splits[split][1])

    def num_examples(self, split: str) -> int:
        return self._check(split, 1)

    def num_batches(self, split: str, batch_size: int) -> int:
        """Batches per epoch; the last one may be smaller (nothing is dropped)."""
        return math.ceil(self._check(split, batch_size) / batch_size)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        device="cpu",
        shuffle: bool | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` on ``device``: x float32 (N, *input_shape), y int64.

        ``train`` is shuffled and augmented by default; ``test`` is in file
        order and never augmented. The order and the augmentation of an epoch
        are a pure function of ``(seed, epoch)``: the same call in any
        process, after any restart, with any worker count, gives identical
        batches. Each split is visited exactly once per epoch.
        """
        n = self._check(split, batch_size)
        if shuffle is None:
            shuffle = split == "train"
        order = epoch_order(n, int(seed), int(epoch), bool(shuffle))
        device = _device(device)
        if split == "train" and self._augmenter is not None:
            if self.augments_on_device(device):
                return self._device_batches(order, batch_size, int(seed), int(epoch), device)
            return self._loader_batches(order, batch_size, int(seed), int(epoch), device)
        return self._direct_batches(split, order, batch_size, device)

    def _resident(self, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``split`` on ``device``, copied there once (images stay uint8)."""
        key = (split, device)
        if key not in self._device_cache:
            x, y = self._splits[split]
            self._device_cache[key] = (x.to(device), y.to(device))
        return self._device_cache[key]

    def augments_on_device(self, device: torch.device) -> bool:
        """Whether augmented training batches for ``device`` (a torch.device) take the batched device path."""
        if self.augment_on != "auto":
            return self.augment_on == "device"
        if device not in self._on_device:
            self._on_device[device] = device.type in ACCELERATORS and self._fits(device)
        return self._on_device[device]

    def _fits(self, device: torch.device) -> bool:
        if ("train", device) in self._device_cache:
            return True  # already resident
        x, y = self._splits["train"]
        split_bytes = x.numel() * x.element_size() + y.numel() * y.element_size()
        free = free_device_memory(device)
        return free is None or split_bytes < RESIDENT_FRACTION * free

    def _device_batches(self, order, batch_size, seed, epoch, device):
        x, y = self._resident("train", device)
        augment = BatchAugmenter(self._augmenter)
        order = order.to(device)
        for index, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start : start + batch_size]
            yield augment(x[idx], batch_generator(device, seed, epoch, index)), y[idx]

    def _direct_batches(self, split, order, batch_size, device):
        x, y = self._resident(split, device)
        order = order.to(device)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb = x[idx]  # indexing copies: callers may modify batches in place
            if xb.dtype == torch.uint8:
                xb = xb.float().div_(255.0)
            yield xb, y[idx]

    def _loader(self, batch_size: int, pin: bool) -> DataLoader:
        key = (batch_size, pin)
        if key not in self._loaders:
            x, y = self._splits["train"]
            workers = max(0, self.num_workers)
            self._loaders[key] = DataLoader(
                _AugmentedImages(x, y, self._augmenter),
                batch_size=batch_size,
                sampler=_KeySampler(),
                num_workers=workers,
                pin_memory=pin,
                persistent_workers=workers > 0,
                drop_last=False,
                # DataLoader draws its workers' base seed from this generator
                # on every epoch; a private one keeps the caller's global RNG
                # (model init, dropout) untouched. Our keys make it unused.
                generator=torch.Generator().manual_seed(0),
            )
        return self._loaders[key]

    def _loader_batches(self, order, batch_size, seed, epoch, device):
        pin = device.type == "cuda"
        key = (batch_size, pin)
        loader = self._loader(batch_size, pin)
        sampler = loader.sampler
        sampler.order, sampler.seed, sampler.epoch = order, seed, epoch
        # A persistent loader has one live iterator; a second batches() call
        # resets it. Mark this generator so an interleaved older one fails
        # loudly instead of silently yielding the newer epoch's batches.
        token = object()
        self._active[key] = token
        try:
            for xb, yb in loader:
                if self._active.get(key) is not token:
                    raise RuntimeError(
                        "this batches() iterator was superseded by a newer batches() call "
                        "with the same batch size; finish one epoch before starting the next"
                    )
                yield xb.to(device, non_blocking=pin), yb.to(device, non_blocking=pin)
        finally:
            if self._active.get(key) is token:
                del self._active[key]

