"""SimpleNet v1 for CIFAR (HasanPour et al. 2016, arXiv:1608.06037).

Layout of ``simplenet_cifar_5m`` in Coderx7/SimpleNet_Pytorch
``Cifar/models/simplenet.py``, the authors' port of their Caffe model: 13
conv layers, each Conv-BN(momentum 0.05)-ReLU, max-pools after layers 4, 7,
9 and 12, global max pool, linear head. Conv weights are Xavier-uniform with
ReLU gain, as there. Its README lists 5.48M parameters; the port (conv
biases plus BN affine) has 5,498,378, +0.34%.

Kept quirk of the reference: the two 1x1 convs use padding 1, so each grows
the map by 2 pixels (no parameter effect). The reference's dropout rates are
all 0, so no dropout layers are built. The global max pool makes any
H, W >= 16 work (28x28 included).
"""
from __future__ import annotations

import torch
from torch import nn

# (out_channels, kernel) for convs, "M" for 2x2 max-pools.
SIMPLENET_CIFAR_CFG = (
    (64, 3), (128, 3), (128, 3), (128, 3), "M",
    (128, 3), (128, 3), (256, 3), "M",
    (256, 3), (256, 3), "M",
    (512, 3), (2048, 1), (256, 1), "M",
    (256, 3),
)


class SimpleNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in SIMPLENET_CIFAR_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            cout, k = item
            layers += [nn.Conv2d(cin, cout, k, padding=1),
                       nn.BatchNorm2d(cout, eps=1e-5, momentum=0.05),
                       nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        gain = nn.init.calculate_gain("relu")
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, gain=gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def simplenet_v1(num_classes: int, in_channels: int = 3) -> SimpleNet:
    return SimpleNet(num_classes, in_channels)
