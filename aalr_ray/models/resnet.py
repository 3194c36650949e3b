"""CIFAR ResNets: ResNet-18 (Cutout code base) and ResNet-20 (He et al. 2016).

Sources
-------
* ``resnet18``: uoguelph-mlrg/Cutout ``model/resnet.py`` (itself from
  kuangliu/pytorch-cifar): 3x3 stride-1 stem without max-pool, four stages of
  two basic blocks (64/128/256/512), 1x1 conv + BN projection shortcuts.
  11,173,962 parameters for 3x32x32 inputs and 10 classes. The reference
  leaves PyTorch's default init (Kaiming-uniform) in place; so do we.
* ``resnet20``: He, Zhang, Ren, Sun, "Deep Residual Learning for Image
  Recognition", CVPR 2016, Sec. 4.2 / Table 6 (0.27M parameters), layout as
  in akamaster/pytorch_resnet_cifar10: 3 stages of 3 basic blocks with
  16/32/64 channels, option-A shortcuts (subsample + zero-pad channels, no
  parameters), Kaiming-normal init of conv and linear weights.

Both end in global average pooling. Cutout's ResNet-18 used a fixed 4x4
average pool, which equals the global pool on 32x32 inputs; the adaptive pool
keeps parameter counts and 32x32 outputs unchanged and lets 28x28 through.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class _ZeroPadShortcut(nn.Module):
    """He et al.'s option A: keep every other pixel, pad new channels with 0."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # Split the padding over both sides of the channel axis, as akamaster does.
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _ZeroPadShortcut(cin, cout, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, stages of basic blocks (first block of each later stage has
    stride 2), global average pool, linear head."""

    def __init__(self, widths, blocks, num_classes: int, in_channels: int, shortcut: str):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(cin, width, stride, shortcut))
                cin = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.pool(self.stages(out)).flatten(1)
        return self.linear(out)


def resnet18(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, in_channels, "B")


def resnet20(num_classes: int, in_channels: int = 3) -> CifarResNet:
    model = CifarResNet((16, 32, 64), (3, 3, 3), num_classes, in_channels, "A")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
    return model
