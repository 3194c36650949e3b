"""A validation split held out of the training split, by seed.

    train, validation = hold_out(data, 0.1, seed=3)
    train.spec.train_size        # 90 % of the training examples
    validation.batches("test", 128, seed=3, epoch=0)   # the other 10 %, in a fixed order, never augmented

Which examples are held out is a pure function of (number of training
examples, fraction, seed): the same run resumed in any process holds out the
same ones, and each seed of a grid holds out its own. A searched baseline
selects its configuration on this split; the test split is only reported.

The model's normalisation statistics stay those of the whole training split
(the dataset's spec): the held-out run trains the same network as the plain
one, and a mean and a standard deviation carry next to nothing of the
held-out labels.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .batching import Data
from .spec import DataError, generator

__all__ = ["VALIDATION_MAX", "VALIDATION_STREAM", "check_fraction", "held_out_indices", "hold_out"]

VALIDATION_MAX = 0.5  # a fraction over half would leave less to train on than to select on
VALIDATION_STREAM = 0x76616C31  # "val1": apart from the epoch order's and augmentation's seeds


def check_fraction(fraction) -> float:
    """``fraction`` as a float in (0, 0.5], or a one-line DataError naming it."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not 0 < fraction <= VALIDATION_MAX:
        raise DataError(f"validation must be a fraction of the training split in (0, {VALIDATION_MAX}], "
                        f"got {fraction!r}")
    return float(fraction)


def held_out_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices) of ``n`` examples, each sorted; disjoint, covering all n.

    At least one example on each side, so a tiny (smoke) split still has both.
    """
    fraction = check_fraction(fraction)
    if n < 2:
        raise DataError(f"a validation split needs at least 2 training examples, got {n}")
    size = min(max(1, round(fraction * n)), n - 1)
    order = torch.randperm(n, generator=generator(int(seed), VALIDATION_STREAM))
    return order[size:].sort().values, order[:size].sort().values


def hold_out(data: Data, fraction: float, seed: int) -> tuple[Data, Data]:
    """(training data without the held-out examples, the held-out examples as a ``test`` split).

    The first keeps ``data``'s augmentation and test split; the second is
    never augmented and is read in a fixed order (``batches("test", ...)``).
    """
    x, y = data._splits["train"]
    keep, held = held_out_indices(len(y), fraction, seed)
    spec = dataclasses.replace(data.spec, train_size=len(keep))
    train = _with_splits(data, spec, (x[keep], y[keep]), data._splits["test"])
    held_spec = dataclasses.replace(data.spec, train_size=0, test_size=len(held))
    validation = _with_splits(data, held_spec, (x[:0], y[:0]), (x[held], y[held]))
    validation._augmenter = None
    return train, validation


def _with_splits(data: Data, spec, train, test) -> Data:
    """A copy of ``data`` (its settings, none of its per-process caches) with other splits."""
    copy = Data.__new__(Data)
    copy.__dict__.update(data.__getstate__())  # __getstate__ leaves the device copies and workers out
    copy.spec, copy._splits = spec, {"train": train, "test": test}
    return copy
