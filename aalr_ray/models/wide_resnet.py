"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis, BMVC 2016).

Pre-activation wide basic blocks (BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3),
widths 16, 16k, 32k, 64k, (d - 4) / 6 blocks per stage, 1x1 projection
shortcut fed by the block's activated input wherever the width changes, as in
the authors' PyTorch port (xternalz/WideResNet-pytorch): Kaiming-normal
(fan_out) conv init, BN weight 1 / bias 0, linear bias 0.

Published sizes (10 classes, 3x32x32): WRN-28-10 36.5M (paper, Table 1/5);
WRN-16-8 11.0M (paper; the GPU benchmark's second model, 10.96M here);
WRN-34-10 46.2M (Madry et al. 2018 adversarial training; the TRADES/MART
PyTorch ports define an extra unused ``sub_block1``, we do not). The paper's
fixed 8x8 average pool is replaced by a global one: same result on 32x32,
and 28x28 inputs (7x7 final maps) work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        # With a projection the shortcut sees the pre-activated input too.
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        stages, cin = [], widths[0]
        for i, width in enumerate(widths[1:]):
            blocks = [WideBlock(cin if j == 0 else width, width,
                                (1 if i == 0 else 2) if j == 0 else 1, dropout)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.stages(self.conv1(x))))
        return self.linear(self.pool(out).flatten(1))


def wrn_16_8(num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-16-8: the paper's 16-layer net, 8 times as wide (11.0M); no dropout by default."""
    return WideResNet(16, 8, num_classes, in_channels, dropout)


def wrn_28_10(num_classes: int, in_channels: int = 3, dropout: float = 0.3) -> WideResNet:
    """WRN-28-10 with the paper's CIFAR dropout of 0.3."""
    return WideResNet(28, 10, num_classes, in_channels, dropout)


def wrn_34_10(num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-34-10; dropout defaults to 0.0 as in Madry-style adversarial training."""
    return WideResNet(34, 10, num_classes, in_channels, dropout)
