"""Model zoo: a registry of named networks built for a given input shape.

``build_model(name, num_classes, input_shape, mean=None, std=None)`` returns
a module that maps a batch ``(N, *input_shape)`` of inputs in [0, 1] to
logits ``(N, num_classes)``. Input normalisation lives inside the model (a
:class:`Normalize` in front of the network) so that attacks and data loaders
both work in pixel space.

Shapes are checked by rule at build time (no dummy forward), and a model that
cannot take the shape raises :class:`ModelShapeError` with a one-line message:

=================================  ==========================================
models                             accepted ``input_shape``
=================================  ==========================================
resnet18, resnet20, wrn-16-8,      (C, H, W), any C, H and W >= 16
wrn-28-10, wrn-34-10, simplenet-v1 (e.g. (3, 32, 32), (1, 28, 28))
vgg16, vgg16-bn                    (C, H, W), any C, 16 <= H, W <= 32
small-cnn                          (C, H, W), any C, H and W >= 8
mnist1d-cnn                        (L,) or (C, L) signals, L >= 16
mlp                                any shape
=================================  ==========================================

The CIFAR nets downsample 3 to 5 times; below 16 pixels their last stages
would see 1x1 (or, for VGG, empty) maps, so 8x8 digits go to small-cnn or
mlp. VGG's classifier wants exactly a 1x1x512 map, hence its upper bound.

``name`` may also be ``"package.module:function"``; the function is called
as ``function(num_classes=..., input_shape=...)`` and must return a module.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..imports import ImportPathError, load_callable
from . import resnet, simplenet, small, vgg, wide_resnet

__all__ = [
    "ModelShapeError",
    "Normalize",
    "PUBLISHED_PARAMS",
    "REFERENCE_SHAPES",
    "check_input_shape",
    "build_model",
    "model_names",
]


class ModelShapeError(ValueError):
    """A model cannot take the given input shape (one-line message)."""


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; buffers, so they follow ``.to()`` and
    are saved in the state_dict."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], input_ndim: int):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        # Channel axis first, then singleton axes that broadcast over the rest.
        view = (-1,) + (1,) * (input_ndim - 1)
        self.register_buffer("mean", mean_t.view(view))
        self.register_buffer("std", std_t.view(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


@dataclass(frozen=True)
class _Entry:
    make: Callable[[int, tuple[int, ...]], nn.Module]
    check: Callable[[tuple[int, ...]], bool]
    accepts: str
    reference_shape: tuple[int, ...]
    published: int
    source: str


def _image(min_side: int, max_side: int | None = None) -> Callable[[tuple[int, ...]], bool]:
    def check(shape: tuple[int, ...]) -> bool:
        return len(shape) == 3 and all(
            min_side <= s and (max_side is None or s <= max_side) for s in shape[1:])
    return check


def _signal(min_len: int) -> Callable[[tuple[int, ...]], bool]:
    return lambda shape: len(shape) in (1, 2) and shape[-1] >= min_len


# Image nets take the channel count from the shape; C is shape[0].
_CIFAR = "(C, H, W) images with H, W >= 16, e.g. (3, 32, 32) or (1, 28, 28)"
_CIFAR_REF = (3, 32, 32)

_REGISTRY: dict[str, _Entry] = {
    "resnet18": _Entry(
        lambda k, s: resnet.resnet18(k, s[0]), _image(16), _CIFAR, _CIFAR_REF, 11_173_962,
        "uoguelph-mlrg/Cutout model/resnet.py (kuangliu/pytorch-cifar ResNet18), 11.17M"),
    "resnet20": _Entry(
        lambda k, s: resnet.resnet20(k, s[0]), _image(16), _CIFAR, _CIFAR_REF, 270_000,
        "He et al. 2016, Table 6: ResNet-20, 0.27M"),
    "wrn-16-8": _Entry(
        lambda k, s: wide_resnet.wrn_16_8(k, s[0]), _image(16), _CIFAR, _CIFAR_REF, 11_000_000,
        "Zagoruyko & Komodakis 2016, WRN-16-8, 11.0M"),
    "wrn-28-10": _Entry(
        lambda k, s: wide_resnet.wrn_28_10(k, s[0]), _image(16), _CIFAR, _CIFAR_REF, 36_500_000,
        "Zagoruyko & Komodakis 2016, WRN-28-10, 36.5M"),
    "wrn-34-10": _Entry(
        lambda k, s: wide_resnet.wrn_34_10(k, s[0]), _image(16), _CIFAR, _CIFAR_REF, 46_200_000,
        "Madry et al. 2018 WRN-34-10 (TRADES/MART PyTorch ports), 46.2M"),
    "vgg16": _Entry(
        lambda k, s: vgg.vgg16(k, s[0]), _image(16, 32),
        "(C, H, W) images with 16 <= H, W <= 32, e.g. (3, 32, 32) or (1, 28, 28)",
        _CIFAR_REF, 15_245_130,
        "chengyangfu/pytorch-vgg-cifar10 vgg.py vgg16 "
        "(counted from its code, no figure published)"),
    "vgg16-bn": _Entry(
        lambda k, s: vgg.vgg16_bn(k, s[0]), _image(16, 32),
        "(C, H, W) images with 16 <= H, W <= 32, e.g. (3, 32, 32) or (1, 28, 28)",
        _CIFAR_REF, 15_253_578,
        "chengyangfu/pytorch-vgg-cifar10 vgg.py vgg16_bn "
        "(counted from its code, no figure published)"),
    "simplenet-v1": _Entry(
        lambda k, s: simplenet.simplenet_v1(k, s[0]), _image(16), _CIFAR, _CIFAR_REF, 5_480_000,
        "HasanPour et al. 2016; Coderx7/SimpleNet_Pytorch Cifar/README.md, 5.48M"),
    "mnist1d-cnn": _Entry(
        lambda k, s: small.mnist1d_cnn(k, s), _signal(16),
        "(L,) or (C, L) signals with L >= 16, e.g. (1, 40)", (1, 40), 5_210,
        "Greydanus 2020, greydanus/mnist1d notebooks/models.py ConvBase "
        "(channels=25, linear_in=125)"),
    "mlp": _Entry(
        lambda k, s: small.mlp(k, s), lambda s: True, "any shape", (1, 40), 15_210,
        "greydanus/mnist1d notebooks/models.py MLPBase (hidden 100) on 40 inputs"),
    "small-cnn": _Entry(
        lambda k, s: small.small_cnn(k, s[0]), _image(8),
        "(C, H, W) images with H, W >= 8, e.g. (1, 8, 8) or (1, 28, 28)", (1, 28, 28), 23_946,
        "this project, aalr_ray/models/small.py (layout in its docstring)"),
}

PUBLISHED_PARAMS: dict[str, tuple[int, str]] = {
    name: (e.published, e.source) for name, e in _REGISTRY.items()}
REFERENCE_SHAPES: dict[str, tuple[int, ...]] = {
    name: e.reference_shape for name, e in _REGISTRY.items()}


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def _as_shape(name: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
        ok = len(shape) > 0 and all(s > 0 and s == d for s, d in zip(shape, input_shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelShapeError(
            f"model {name!r} got input_shape {input_shape!r}: expected a non-empty "
            f"tuple of positive ints, one example's shape, channels first")
    return shape


def _import_factory(path: str) -> Callable[..., nn.Module]:
    try:
        return load_callable(path, "model factory")
    except ImportPathError as exc:  # one line naming the path and the cause; a plain ValueError, as ever
        raise ValueError(str(exc)) from None


def _with_normalize(net: nn.Module, mean, std, shape: tuple[int, ...]) -> nn.Module:
    if mean is None and std is None:
        return net
    if mean is None or std is None:
        raise ValueError("give both mean and std, or neither")
    channels = shape[0] if len(shape) > 1 else 1
    norm = Normalize(mean, std, len(shape))
    for label, t in (("mean", norm.mean), ("std", norm.std)):
        if t.numel() not in (1, channels):
            raise ValueError(
                f"{label} has {t.numel()} values, input_shape {shape} has {channels} channel(s)")
    if not bool((norm.std > 0).all()):
        raise ValueError("std must be positive")
    return nn.Sequential(OrderedDict(normalize=norm, net=net))


def check_input_shape(name: str, input_shape: Sequence[int]) -> None:
    """Raise :class:`ModelShapeError` if registry model ``name`` cannot take ``input_shape``.

    By rule, without building the model (cheap even for WRN-28-10). Import-path
    models are not checked: only building them tells.
    """
    shape = _as_shape(name, input_shape)
    entry = _REGISTRY.get(name)
    if entry is not None and not entry.check(shape):
        raise ModelShapeError(f"model {name!r} cannot take input_shape {shape}; it accepts {entry.accepts}")


def build_model(name: str, num_classes: int, input_shape: Sequence[int],
                mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> nn.Module:
    """Build registry model ``name`` (or ``"module:function"``) for ``input_shape``.

    With ``mean``/``std`` the result is ``Sequential(normalize=Normalize, net=model)``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    shape = _as_shape(name, input_shape)
    if ":" in name:
        net = _import_factory(name)(num_classes=num_classes, input_shape=shape)
        if not isinstance(net, nn.Module):
            raise ValueError(f"model factory {name!r} returned {type(net).__name__}, "
                             "not a torch.nn.Module")
    else:
        entry = _REGISTRY.get(name)
        if entry is None:
            raise ValueError(f"unknown model {name!r}; valid names: {', '.join(model_names())}"
                             " (or 'package.module:function')")
        check_input_shape(name, shape)
        net = entry.make(num_classes, shape)
    return _with_normalize(net, mean, std, shape)
