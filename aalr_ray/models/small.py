"""Small CPU models: the MNIST-1D baselines and a tiny image CNN.

* ``mnist1d_cnn``: ConvBase of Greydanus, "Scaling down deep learning"
  (2020), greydanus/mnist1d ``notebooks/models.py``: Conv1d(C, 25, 5, s2, p1)
  - ReLU - Conv1d(25, 25, 3, s2, p1) - ReLU - Conv1d(25, 25, 3, s2, p1) -
  ReLU - flatten - Linear. 5,210 parameters for (1, 40) and 10 classes; the
  head's width follows the signal length, computed at build time.
* ``mlp``: flatten - Linear(d, 100) - ReLU - Linear(100, 100) - ReLU -
  Linear(100, classes), the size of the MNIST-1D MLPBase (15,210 parameters
  for 40 inputs). MLPBase adds a residual around its second layer; this is
  the plain stack, with the same parameter count.
* ``small_cnn`` (this project's own, for (C, 8, 8) digits and (C, 28, 28)
  Fashion-MNIST): Conv(C, 16, 3, p1) - ReLU - Conv(16, 32, 3, s2, p1) - ReLU
  - Conv(32, 64, 3, s2, p1) - ReLU - global average pool - Linear(64,
  classes). No BatchNorm, so train and eval modes compute the same function
  (simple for adversarial evaluation). 23,946 parameters for C = 1 and 10
  classes, whatever H and W.

All keep PyTorch's default init, as the MNIST-1D references do.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def conv1d_out(length: int, kernel: int, stride: int = 2, padding: int = 1) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class ConvBase1d(nn.Module):
    def __init__(self, num_classes: int, length: int, in_channels: int = 1, channels: int = 25):
        super().__init__()
        self.in_channels = in_channels
        self.convs = nn.Sequential(
            nn.Conv1d(in_channels, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        out_len = conv1d_out(conv1d_out(conv1d_out(length, 5), 3), 3)
        self.linear = nn.Linear(channels * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Accept (N, L) as well as (N, C, L) batches.
        x = x.reshape(x.shape[0], self.in_channels, x.shape[-1])
        return self.linear(self.convs(x).flatten(1))


def mnist1d_cnn(num_classes: int, input_shape: tuple[int, ...]) -> ConvBase1d:
    in_channels = input_shape[0] if len(input_shape) == 2 else 1
    return ConvBase1d(num_classes, input_shape[-1], in_channels)


def mlp(num_classes: int, input_shape: tuple[int, ...], hidden: int = 100) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x).flatten(1))


def small_cnn(num_classes: int, in_channels: int = 1) -> SmallCNN:
    return SmallCNN(num_classes, in_channels)
