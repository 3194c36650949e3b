"""VGG-16 for CIFAR, as in chengyangfu/pytorch-vgg-cifar10 ``vgg.py``.

Configuration "D" of Simonyan & Zisserman (13 conv layers, 5 max-pools),
then Dropout-Linear(512, 512)-ReLU-Dropout-Linear(512, 512)-ReLU-Linear(512,
classes). Conv weights ~ N(0, 2 / (k*k*out_channels)), conv biases 0; linear
layers keep PyTorch's default init, as in the reference. 15,245,130
parameters (15,253,578 with BN) for 3x32x32 and 10 classes; the repository
states no figure, so these are counted from its code.

Shape choice: the pools use ``ceil_mode=True``. On 32x32 (even sizes all the
way down) that changes nothing; 28x28 goes 14, 7, 4, 2, 1 instead of reaching
0. The classifier expects a 1x1x512 map, so inputs must have 16 <= H, W <= 32.
"""
from __future__ import annotations

import math

import torch
from torch import nn

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
             512, 512, 512, "M", 512, 512, 512, "M")


def _features(in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = in_channels
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            continue
        layers.append(nn.Conv2d(cin, v, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        cin = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, batch_norm: bool = False):
        super().__init__()
        self.features = _features(in_channels, batch_norm)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(512, 512), nn.ReLU(True),
            nn.Dropout(), nn.Linear(512, 512), nn.ReLU(True),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def vgg16(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(num_classes, in_channels, batch_norm=False)


def vgg16_bn(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(num_classes, in_channels, batch_norm=True)
