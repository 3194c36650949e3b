"""Tests for aalr_ray.data: specs, batching, determinism, augmentation, errors."""
import hashlib
import pathlib
import pickle
import random
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import aalr_ray.data.sources as sources
from aalr_ray.data import (
    AUGMENTATIONS,
    Data,
    DataError,
    DatasetSpec,
    dataset_names,
    default_data_dir,
    load_dataset,
)
from aalr_ray.data.augment import cutout, pad_crop, random_erasing
from aalr_ray.data.batching import epoch_order
from aalr_ray.data.spec import generator

HERE = pathlib.Path(__file__).parent
REPO = HERE.parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def mnist1d_first_load(data_dir):
    """The one MNIST-1D generation of this file (~2 s), with the global RNG
    states around it, so later loads come from the cache."""
    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    data = load_dataset("mnist1d", data_dir=data_dir)
    after = (random.random(), np.random.rand())
    return data, before, after


def row_keys(x: torch.Tensor) -> torch.Tensor:
    """One float64 number per example, to compare multisets of examples."""
    w = torch.linspace(1.0, 2.0, x[0].numel(), dtype=torch.float64)
    return (x.flatten(1).double() * w).sum(1)


def collect(batches):
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def digest(batches) -> str:
    h = hashlib.sha256()
    for x, y in batches:
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    return h.hexdigest()


def write_idx(path: pathlib.Path, a: np.ndarray) -> None:
    """An uncompressed IDX file (the MNIST format) of uint8 values."""
    header = struct.pack(">I", 0x0800 | a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    path.write_bytes(header + a.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fake_fashion_dir(tmp_path_factory):
    """A tiny Fashion-MNIST in torchvision's layout, so the torchvision file
    path and the DataLoader path are exercised without the real files."""
    root = tmp_path_factory.mktemp("fashion")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 96), ("t10k", 40)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.randint(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


# --- names and specs ------------------------------------------------------------


def test_names_and_augmentations():
    assert dataset_names() == ["cifar10", "cifar100", "digits", "fashion-mnist", "mnist1d", "synthetic"]
    assert AUGMENTATIONS == ("none", "standard", "cutout", "random-erasing")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AALR_RAY_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("AALR_RAY_DATA_DIR")
    assert default_data_dir() == pathlib.Path.home() / ".cache" / "aalr_ray" / "data"


@pytest.mark.parametrize(
    "name, shape, sizes",
    [("digits", (1, 8, 8), (1437, 360)), ("mnist1d", (1, 40), (4000, 1000)), ("synthetic", (3, 32, 32), (2048, 512))],
)
def test_offline_specs(name, shape, sizes, data_dir, mnist1d_first_load):
    data = load_dataset(name, data_dir=data_dir)
    s = data.spec
    assert isinstance(s, DatasetSpec)
    assert (s.name, s.num_classes, s.input_shape, (s.train_size, s.test_size)) == (name, 10, shape, sizes)
    assert len(s.mean) == len(s.std) == shape[0]
    x, _ = collect(data.batches("train", 1000, seed=0, epoch=0, shuffle=False))
    assert torch.allclose(x.mean(dim=(0, 2, 3) if x.dim() == 4 else (0, 2)).double(), torch.tensor(s.mean, dtype=torch.float64), atol=1e-4)
    if name != "mnist1d":
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert float(x.max()) > 0.9


def test_torchvision_smoke_keeps_the_spec_and_needs_no_files(tmp_path):
    for name, classes, shape in (("cifar10", 10, (3, 32, 32)), ("cifar100", 100, (3, 32, 32)), ("fashion-mnist", 10, (1, 28, 28))):
        data = load_dataset(name, data_dir=tmp_path, smoke=True, download=False)
        s = data.spec
        assert (s.num_classes, s.input_shape, s.train_size, s.test_size) == (classes, shape, 256, 128)
        assert s.mean == sources.TORCHVISION[name].mean and s.std == sources.TORCHVISION[name].std
        x, y = next(data.batches("train", 64, seed=0, epoch=0))
        assert x.shape == (64, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert s.mean == (0.2860,)
    assert list(tmp_path.iterdir()) == []


def test_smoke_and_limits_cut_in_memory_sets(data_dir, mnist1d_first_load):
    full = load_dataset("digits")
    smoke = load_dataset("digits", smoke=True)
    assert (smoke.spec.train_size, smoke.spec.test_size) == (256, 128)
    cut = load_dataset("mnist1d", data_dir=data_dir, train_limit=100, test_limit=7)
    assert (cut.spec.train_size, cut.spec.test_size) == (100, 7)
    a, _ = collect(full.batches("train", 50, seed=0, epoch=0, shuffle=False))
    b, _ = collect(load_dataset("digits", train_limit=50).batches("train", 50, seed=0, epoch=0, shuffle=False))
    assert torch.equal(a[:50], b)  # the first N examples, deterministically
    with pytest.raises(DataError, match="train_limit"):
        load_dataset("digits", train_limit=0)


# --- batching --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "mnist1d", "synthetic"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_batches_cover_split_once(name, split, data_dir, mnist1d_first_load):
    data = load_dataset(name, data_dir=data_dir)
    n = data.spec.train_size if split == "train" else data.spec.test_size
    batches = list(data.batches(split, 128, seed=3, epoch=1))
    assert len(batches) == data.num_batches(split, 128) == -(-n // 128)
    assert [len(y) for _, y in batches[:-1]] == [128] * (len(batches) - 1)
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == data.spec.input_shape and x.shape[0] == y.shape[0]
    x, y = collect(batches)
    ref_x, ref_y = collect(data.batches(split, n, seed=0, epoch=0, shuffle=False))
    assert len(y) == n
    assert torch.equal(torch.sort(row_keys(x)).values, torch.sort(row_keys(ref_x)).values)
    assert torch.equal(torch.bincount(y, minlength=10), torch.bincount(ref_y, minlength=10))
    if split == "test":  # fixed order by default
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


def test_order_is_a_function_of_seed_and_epoch():
    data = load_dataset("synthetic")
    first = collect(data.batches("train", 100, seed=5, epoch=2))
    again = collect(data.batches("train", 100, seed=5, epoch=2))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other_epoch = collect(data.batches("train", 100, seed=5, epoch=3))
    other_seed = collect(data.batches("train", 100, seed=6, epoch=2))
    assert not torch.equal(first[1], other_epoch[1])
    assert not torch.equal(first[1], other_seed[1])
    # batch size does not change the epoch's order
    assert torch.equal(collect(data.batches("train", 37, seed=5, epoch=2))[1], first[1])
    assert torch.equal(torch.sort(epoch_order(50, 1, 1, True)).values, torch.arange(50))


def test_batch_arguments_are_checked():
    data = load_dataset("digits")
    with pytest.raises(DataError, match="split"):
        data.batches("valid", 10, seed=0, epoch=0)
    with pytest.raises(DataError, match="batch_size"):
        data.num_batches("train", 0)


# --- augmentation and the DataLoader path ----------------------------------------------


@pytest.mark.parametrize("augmentation", ["standard", "cutout", "random-erasing"])
def test_augmentation_is_deterministic_in_range_and_changes_pixels(augmentation):
    plain = load_dataset("synthetic", train_limit=256)
    aug = load_dataset("synthetic", augmentation=augmentation, train_limit=256, num_workers=0)
    x0, y0 = collect(plain.batches("train", 64, seed=1, epoch=4))
    x1, y1 = collect(aug.batches("train", 64, seed=1, epoch=4))
    x2, _ = collect(aug.batches("train", 64, seed=1, epoch=4))
    x3, _ = collect(aug.batches("train", 64, seed=1, epoch=5))
    assert torch.equal(y0, y1)  # same order with or without augmentation
    assert torch.equal(x1, x2)  # same (seed, epoch): identical, augmentation included
    assert 0.0 <= float(x1.min()) and float(x1.max()) <= 1.0
    changed = (x1 != x0).flatten(1).any(1).float().mean()
    assert changed > 0.7, changed  # crop offset (0,0)+no flip is 1/162 of cases
    assert not torch.equal(x1[:64], x3[:64])
    # the test split is never augmented
    assert torch.equal(collect(aug.batches("test", 64, seed=1, epoch=4))[0], collect(plain.batches("test", 64, seed=1, epoch=4))[0])


def test_dataloader_workers_do_not_change_batches_or_global_rng(fake_fashion_dir):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    kwargs = dict(data_dir=fake_fashion_dir, download=False, augmentation="random-erasing")
    in_process = load_dataset("fashion-mnist", num_workers=0, **kwargs)
    workers = load_dataset("fashion-mnist", num_workers=2, **kwargs)
    assert (workers.spec.train_size, workers.spec.test_size, workers.spec.input_shape) == (96, 40, (1, 28, 28))
    try:
        for epoch in (0, 1, 0):  # persistent workers serve several epochs
            a = list(in_process.batches("train", 32, seed=9, epoch=epoch))
            b = list(workers.batches("train", 32, seed=9, epoch=epoch))
            assert digest(a) == digest(b)
            assert len(b) == workers.num_batches("train", 32) == 3
        assert workers._loaders[(32, False)]._iterator is not None  # persistent pool reused
    finally:
        workers.close()
    assert torch.equal(state, torch.get_rng_state())


def test_same_batches_in_a_fresh_process():
    code = (
        "import hashlib, torch\n"
        "from aalr_ray.data import load_dataset\n"
        "d = load_dataset('synthetic', augmentation='cutout', train_limit=200, num_workers=0)\n"
        "h = hashlib.sha256()\n"
        "for x, y in d.batches('train', 64, seed=11, epoch=7):\n"
        "    h.update(x.numpy().tobytes()); h.update(y.numpy().tobytes())\n"
        "print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    here = load_dataset("synthetic", augmentation="cutout", train_limit=200, num_workers=1)
    try:
        assert out.stdout.strip() == digest(here.batches("train", 64, seed=11, epoch=7))
    finally:
        here.close()


def test_superseded_iterator_fails_loudly():
    data = load_dataset("synthetic", augmentation="standard", train_limit=200, num_workers=0)
    old = data.batches("train", 50, seed=0, epoch=0)
    next(old)
    new = data.batches("train", 50, seed=0, epoch=1)
    next(new)
    with pytest.raises(RuntimeError, match="superseded"):
        next(old)
    assert len(list(new)) == 3


def test_cutout_fills_one_clipped_square():
    fill = torch.tensor([0.25, 0.5, 0.75]).view(3, 1, 1)
    sides = set()
    for s in range(200):
        x = cutout(torch.ones(3, 32, 32), 16, fill, generator(s))
        mask = (x != 1).all(0)
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert mask.sum() == h * w  # one axis-aligned rectangle
        assert h <= 16 and w <= 16 and (h == 16 or rows.min() == 0 or rows.max() == 31)
        assert torch.equal(x[:, mask], fill.view(3, 1).expand(3, h * w))
        sides.add((h, w))
    assert (16, 16) in sides and any(h < 16 or w < 16 for h, w in sides)


def test_cutout_patch_is_zero_after_model_normalisation():
    for name, side in (("cifar10", 16), ("cifar100", 8)):
        data = load_dataset(name, smoke=True, augmentation="cutout", num_workers=0)
        x, _ = next(data.batches("train", 64, seed=0, epoch=0))
        mean = torch.tensor(data.spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(data.spec.std).view(1, 3, 1, 1)
        zero = (((x - mean) / std).abs() < 1e-6).all(1)  # (N, H, W)
        per_image = zero.flatten(1).sum(1)
        assert int(per_image.max()) == side * side  # some patch lies fully inside
        assert bool((per_image <= side * side).all()) and bool((per_image > 0).all())


def test_pad_crop_and_random_erasing():
    x = torch.arange(1, 3 * 32 * 32 + 1, dtype=torch.float32).view(3, 32, 32)
    for s in range(20):
        y = pad_crop(x, 4, generator(s))
        nz = (y != 0).all(0)
        r, c = nz.any(1).nonzero(), nz.any(0).nonzero()
        assert y.shape == x.shape and len(r) >= 28 and len(c) >= 28
        # the kept block is a shifted copy of the original
        block = y[:, r.min() : r.max() + 1, c.min() : c.max() + 1]
        assert any(torch.equal(block, x[:, i : i + block.shape[1], j : j + block.shape[2]]) for i in range(5) for j in range(5))
    erased = 0
    for s in range(200):
        img = torch.full((3, 32, 32), 2.0)
        out = random_erasing(img, generator(s))
        m = (out != 2.0).all(0)
        if m.any():
            erased += 1
            frac = float(m.sum()) / (32 * 32)
            assert 0.015 <= frac <= 0.42 and float(out.max()) <= 2.0 and float(out[:, m].max()) < 1.0
    assert 70 <= erased <= 130  # p = 0.5


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, where", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("fashion-mnist", "FashionMNIST/raw")])
@pytest.mark.parametrize("download", [True, False])
def test_missing_files_offline_is_one_line(name, where, download, tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_dataset(name, data_dir=tmp_path, download=download)
    assert time.monotonic() - start < 20
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(name)
    assert str(tmp_path) in msg and where in msg and "http" in msg


def test_unknown_names_list_the_choices():
    with pytest.raises(DataError) as info:
        load_dataset("imagenet")
    assert all(n in str(info.value) for n in dataset_names())
    with pytest.raises(DataError) as info:
        load_dataset("digits", augmentation="mixup")
    assert all(a in str(info.value) for a in AUGMENTATIONS)
    for name, aug, valid in (("digits", "standard", "none"), ("fashion-mnist", "cutout", "none, standard, random-erasing")):
        with pytest.raises(DataError) as info:
            load_dataset(name, augmentation=aug)
        msg = str(info.value)
        assert name in msg and aug in msg and msg.endswith(valid)


# --- factories ------------------------------------------------------------------------


def test_factory_tensor_pair(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    data = load_dataset("data_factories:tensor_pair")
    s = data.spec
    assert (s.name, s.num_classes, s.input_shape, s.train_size, s.test_size) == ("data_factories:tensor_pair", 3, (2, 5, 5), 40, 20)
    import data_factories

    (x, _), _ = data_factories.tensor_pair()
    assert s.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    assert s.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-5)
    xb, yb = collect(data.batches("test", 8, seed=0, epoch=0))
    assert xb.shape == (20, 2, 5, 5) and yb.dtype == torch.int64
    assert len(list(data.batches("train", 16, seed=0, epoch=0))) == 3


def test_factory_dataset_with_data_dir(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(HERE))
    data = load_dataset("data_factories:dataset_with_dir", data_dir=tmp_path)
    import data_factories

    assert data_factories.SEEN_DATA_DIRS[-1] == tmp_path
    s = data.spec
    assert (s.num_classes, s.input_shape, s.train_size, s.test_size) == (5, (4,), 10, 4)
    assert s.mean == pytest.approx((4.5,)) and len(s.std) == 1
    x, y = collect(data.batches("test", 3, seed=0, epoch=0))
    assert x.dtype == torch.float32 and torch.equal(x[:, 0], torch.tensor([100.0, 101, 102, 103]))
    with pytest.raises(DataError, match="not supported"):
        load_dataset("data_factories:tensor_pair", augmentation="standard")


@pytest.mark.parametrize(
    "path, words",
    [
        ("no_such_module_xyz:make", "does not import"),
        ("data_factories:missing", "no attribute"),
        ("data_factories:broken", "boom with a second line"),
        ("data_factories:not_a_pair", "(train, test)"),
        ("data_factories:", "package.module:function"),
    ],
)
def test_factory_errors_are_one_line(path, words, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    with pytest.raises(DataError) as info:
        load_dataset(path)
    assert words in str(info.value) and "\n" not in str(info.value)


# --- MNIST-1D cache --------------------------------------------------------------------


def test_mnist1d_cache_is_reused(data_dir, mnist1d_first_load, monkeypatch):
    first, rng_before, rng_after = mnist1d_first_load
    assert rng_before == rng_after  # generation left the global RNGs alone
    path = sources.mnist1d_cache_path(data_dir)
    assert path.exists() and not list(path.parent.glob("*.tmp"))

    def no_generation():
        raise AssertionError("make_dataset called although the cache exists")

    monkeypatch.setattr(sources, "_make_mnist1d", no_generation)
    again = load_dataset("mnist1d", data_dir=data_dir)
    assert again.spec == first.spec
    a = collect(first.batches("train", 4000, seed=0, epoch=0))
    b = collect(again.batches("train", 4000, seed=0, epoch=0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with np.load(path, allow_pickle=False) as f:
        assert f["x"].shape == (4000, 40) and f["x_test"].shape == (1000, 40)


def test_data_pickles_without_process_state():
    data = load_dataset("synthetic", augmentation="standard", train_limit=64, num_workers=0)
    list(data.batches("train", 32, seed=0, epoch=0))
    clone = pickle.loads(pickle.dumps(data))
    assert isinstance(clone, Data) and clone._loaders == {} and clone.spec == data.spec
    assert digest(clone.batches("train", 32, seed=0, epoch=1)) == digest(data.batches("train", 32, seed=0, epoch=1))
