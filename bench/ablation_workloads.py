"""The AALR ablation's workloads beyond the league's (bench/ablation.py), loaded by import path.

Each differs from the league's three in one way that stresses AALR's decisions:

* ``mnist1d_large``: MNIST-1D generated with three times the package's default
  number of samples (12,000 train / 3,000 test): more, noisier steps per epoch;
* ``deep_mlp``: eight ReLU layers without BatchNorm or residuals, where a high
  LR kills units and the loss can sit at ln(classes) (collapse);
* ``dropout_mlp``: a wide MLP with dropout 0.3, whose training loss is noisy
  from epoch to epoch by construction (the last-epoch judgement's weak spot).
"""

from __future__ import annotations

import math
import pathlib
import random

import numpy as np
import torch
from torch import nn

LARGE_SAMPLES = 15_000  # the package's default is 5,000 (80 % train)


def mnist1d_large(data_dir=None):
    """(train, test) as (X, y) tensors: X (N, 1, 40) float32, cached as .npz in ``data_dir``."""
    from mnist1d.data import get_dataset_args, make_dataset

    from aalr_ray.files import atomic_open

    path = pathlib.Path(data_dir or ".") / "mnist1d" / f"mnist1d-large-{LARGE_SAMPLES}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    else:
        args = get_dataset_args()
        args.num_samples = LARGE_SAMPLES
        py_state, np_state = random.getstate(), np.random.get_state()
        try:  # make_dataset reseeds the global RNGs
            made = make_dataset(args)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        arrays = {k: np.asarray(made[k]) for k in ("x", "y", "x_test", "y_test")}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as f:
            np.savez(f, **arrays)

    def split(x, y):
        return torch.tensor(x, dtype=torch.float32).unsqueeze(1), torch.tensor(y, dtype=torch.int64)

    return split(arrays["x"], arrays["y"]), split(arrays["x_test"], arrays["y_test"])


def deep_mlp(num_classes: int, input_shape, depth: int = 8, width: int = 64) -> nn.Sequential:
    """``depth`` Linear layers with ReLU between them; no normalisation, no skip connections."""
    layers: list[nn.Module] = [nn.Flatten()]
    size = math.prod(input_shape)
    for _ in range(depth - 1):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, num_classes))


def dropout_mlp(num_classes: int, input_shape, width: int = 256, p: float = 0.3) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(),
                         nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Dropout(p),
                         nn.Linear(width, width), nn.ReLU(), nn.Dropout(p),
                         nn.Linear(width, num_classes))
