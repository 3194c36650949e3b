"""Tests for the model zoo (aalr_ray.models): shapes, sizes, normalisation, errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from aalr_ray.models import (
    PUBLISHED_PARAMS,
    REFERENCE_SHAPES,
    ModelShapeError,
    Normalize,
    build_model,
    model_names,
)

NAMES = model_names()
CIFAR_NETS = ["resnet18", "resnet20", "wrn-16-8", "wrn-28-10", "wrn-34-10", "vgg16", "vgg16-bn", "simplenet-v1"]
CHEAP = ["mlp", "mnist1d-cnn", "small-cnn", "resnet20"]


def make_tiny(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Factory for the ``module:function`` form of build_model."""
    assert isinstance(input_shape, tuple)
    features = int(torch.tensor(input_shape).prod())
    return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))


def not_a_module(num_classes: int, input_shape: tuple[int, ...]) -> str:
    return "nope"


# This module's own import name, whatever pytest's import mode makes of it.
TINY = f"{__name__}:make_tiny"


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def reference_models():
    """Each registry model for 10 classes on its reference shape, built once."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = build_model(name, 10, REFERENCE_SHAPES[name]).eval()
        return cache[name]

    yield get
    cache.clear()


def last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def test_registry_is_complete():
    assert NAMES == sorted(NAMES)
    assert set(NAMES) == {
        "resnet18", "resnet20", "wrn-16-8", "wrn-28-10", "wrn-34-10", "vgg16", "vgg16-bn",
        "simplenet-v1", "mnist1d-cnn", "mlp", "small-cnn"}
    assert set(PUBLISHED_PARAMS) == set(NAMES) == set(REFERENCE_SHAPES)
    for count, source in PUBLISHED_PARAMS.values():
        assert isinstance(count, int) and count > 0
        assert isinstance(source, str) and source


@pytest.mark.parametrize("name", NAMES)
def test_forward_reference_shape(name, reference_models):
    model = reference_models(name)
    with torch.no_grad():
        out = model(torch.rand(2, *REFERENCE_SHAPES[name]))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_published(name, reference_models):
    published, _ = PUBLISHED_PARAMS[name]
    assert abs(n_params(reference_models(name)) - published) <= 0.02 * published


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_changes_head(name, reference_models):
    base = reference_models(name)
    model = build_model(name, 100, REFERENCE_SHAPES[name])
    head = last_linear(model)
    assert head.out_features == 100
    assert n_params(model) - n_params(base) == 90 * (head.in_features + 1)


@pytest.mark.parametrize("name", CIFAR_NETS)
def test_cifar_nets_take_grayscale_28x28(name):
    model = build_model(name, 10, (1, 28, 28)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(40,), (1, 40), (1, 16)])
def test_mnist1d_cnn_signal_forms(shape):
    model = build_model("mnist1d-cnn", 10, shape)
    assert model(torch.rand(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 28, 28), (1, 40)])
def test_small_models_other_shapes(shape):
    for name in ("mlp", "small-cnn") if len(shape) == 3 else ("mlp",):
        assert build_model(name, 10, shape)(torch.rand(2, *shape)).shape == (2, 10)


REJECTED = (
    [(name, shape) for name in CIFAR_NETS for shape in [(1, 40), (40,), (1, 8, 8), (3, 32)]]
    + [("vgg16", (3, 64, 64)), ("vgg16-bn", (3, 33, 32)), ("resnet20", (1, 28, 12)),
       ("mnist1d-cnn", (3, 32, 32)), ("mnist1d-cnn", (1, 8)), ("mnist1d-cnn", (15,)),
       ("small-cnn", (1, 40)), ("small-cnn", (1, 4, 4)), ("small-cnn", (64,))]
    + [(name, bad) for name in ("mlp", "resnet18") for bad in [(), (0, 32, 32), (3, -1, 32)]]
)


@pytest.mark.parametrize("name,shape", REJECTED)
def test_rejected_shapes(name, shape):
    with pytest.raises(ModelShapeError) as info:
        build_model(name, 10, shape)
    message = str(info.value)
    assert "\n" not in message
    assert repr(name) in message and str(tuple(shape)) in message


def test_model_shape_error_is_value_error():
    assert issubclass(ModelShapeError, ValueError)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_model("resnet-9000", 10, (3, 32, 32))
    message = str(info.value)
    assert "\n" not in message and "resnet-9000" in message
    assert all(name in message for name in NAMES)


@pytest.mark.parametrize("classes", [0, -1, 2.0, True])
def test_bad_num_classes(classes):
    with pytest.raises(ValueError):
        build_model("mlp", classes, (1, 40))


@pytest.mark.parametrize(
    "name,shape,mean,std",
    [("mlp", (1, 40), [0.1], [0.5]),
     ("mnist1d-cnn", (40,), [0.2], [0.3]),
     ("small-cnn", (3, 8, 8), [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
     ("resnet20", (3, 32, 32), [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])],
)
def test_normalize_matches_manual(name, shape, mean, std):
    torch.manual_seed(1)
    bare = build_model(name, 10, shape).eval()
    torch.manual_seed(1)
    wrapped = build_model(name, 10, shape, mean=mean, std=std).eval()
    assert isinstance(wrapped.normalize, Normalize) and type(wrapped.net) is type(bare)
    x = torch.rand(2, *shape)
    view = (-1,) + (1,) * (len(shape) - 1)
    manual = (x - torch.tensor(mean).view(view)) / torch.tensor(std).view(view)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), bare(manual))
    state = wrapped.state_dict()
    assert "normalize.mean" in state and "normalize.std" in state
    assert wrapped.to(torch.float64).normalize.mean.dtype == torch.float64


@pytest.mark.parametrize(
    "mean,std",
    [([0.5], None), (None, [0.5]), ([0.1, 0.2], [0.3, 0.3]), ([0.5, 0.5, 0.5], [0.2, 0.0, 0.2])],
)
def test_normalize_bad_arguments(mean, std):
    with pytest.raises(ValueError):
        build_model("small-cnn", 10, (3, 8, 8), mean=mean, std=std)


def test_import_path_factory():
    model = build_model(TINY, 7, (1, 8, 8), mean=[0.5], std=[0.25])
    assert isinstance(model.normalize, Normalize)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 7)
    assert build_model(TINY, 3, [2, 5])(torch.rand(4, 2, 5)).shape == (4, 3)


@pytest.mark.parametrize(
    "path",
    ["no_such_package_xyz.models:make", "aalr_ray.models:no_such_factory",
     f"{__name__}:not_a_module"],
)
def test_bad_import_path(path):
    with pytest.raises(ValueError) as info:
        build_model(path, 10, (1, 8, 8))
    message = str(info.value)
    assert "\n" not in message and path in message
