"""Where the examples come from: torchvision files, generators, factories.

Every source returns ``(train, test)``, each an ``(x, y)`` pair of CPU
tensors: x uint8 images (N, C, H, W) in 0..255 or float32 (N, *shape), y int64.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import pathlib
import random
import socket
import threading
import urllib.parse
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import one_line
from ..files import atomic_open
from ..imports import ImportPathError, is_import_path, load_callable
from .spec import DataError

Split = tuple[torch.Tensor, torch.Tensor]

# Sizes used by smoke=True: a quick CPU check of a paper-scale job.
SMOKE_TRAIN, SMOKE_TEST = 256, 128


# --- torchvision datasets ------------------------------------------------------


@dataclass(frozen=True)
class TorchvisionInfo:
    cls: str
    num_classes: int
    input_shape: tuple[int, ...]
    # Per-channel statistics of the full training set scaled to [0, 1]
    # (population std over all pixels, not the mean of per-image stds).
    # Fixed here so smoke runs, which have no files, get the same spec.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    expected: str  # what must be in data_dir, for the error message
    url: str


TORCHVISION = {
    "cifar10": TorchvisionInfo(
        "CIFAR10", 10, (3, 32, 32),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "cifar-10-batches-py/ (extracted from the archive)",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": TorchvisionInfo(
        "CIFAR100", 100, (3, 32, 32),
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "cifar-100-python/ (extracted from the archive)",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
    "fashion-mnist": TorchvisionInfo(
        "FashionMNIST", 10, (1, 28, 28),
        (0.2860,), (0.3530,),
        "FashionMNIST/raw/ holding the four gunzipped files "
        "{train,t10k}-{images-idx3,labels-idx1}-ubyte",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}

PROBE_TIMEOUT_S = 5.0


def _reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url``'s host accepts a TCP connection, else the reason.

    torchvision's download has no timeout; on a network that drops packets
    it could hang for minutes. The probe (DNS included) runs in a daemon
    thread and is abandoned after ``timeout`` seconds.
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[str | None] = ["no answer within %.0f s" % timeout]

    def probe() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            result[0] = None
        except OSError as exc:
            result[0] = f"{type(exc).__name__}: {exc}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return result[0]


def _open_torchvision(name: str, root: pathlib.Path, download: bool):
    """The torchvision (train, test) datasets, or DataError saying what to put where."""
    import torchvision.datasets as tvd

    info = TORCHVISION[name]
    cls = getattr(tvd, info.cls)

    def missing(why: str) -> DataError:
        return DataError(
            f"{name}: dataset files missing or corrupt in {root} ({why}); put {info.expected} "
            f"there (from {info.url}), or point data_dir / AALR_RAY_DATA_DIR at a "
            f"directory that has them"
        )

    try:
        return cls(str(root), train=True), cls(str(root), train=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        found = ""
    except Exception as exc:  # e.g. a truncated pickle
        found = f"{type(exc).__name__}: {one_line(exc)}; "
    if not download:
        raise missing(f"{found}download disabled")
    reason = _reachable(info.url)
    if reason is not None:
        raise missing(f"{found}download failed, host unreachable: {reason}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        return cls(str(root), train=True, download=True), cls(str(root), train=False, download=True)
    except Exception as exc:  # any failure of the download is the user's to fix
        raise missing(f"{found}download failed: {type(exc).__name__}: {one_line(exc)}") from None


def load_torchvision(name: str, root: pathlib.Path, download: bool) -> tuple[Split, Split]:
    train, test = _open_torchvision(name, root, download)
    return _tv_arrays(train), _tv_arrays(test)


def _tv_arrays(ds) -> Split:
    x = torch.as_tensor(np.asarray(ds.data))
    if x.dim() == 3:  # MNIST family: (N, H, W)
        x = x.unsqueeze(1)
    else:  # CIFAR: (N, H, W, C) numpy
        x = x.permute(0, 3, 1, 2)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return x.contiguous(), y


# --- generated and bundled sets -----------------------------------------------


def synthetic_images(
    n_train: int,
    n_test: int,
    num_classes: int,
    shape: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int,
) -> tuple[Split, Split]:
    """Deterministic uint8 images a small CNN can learn from.

    Each class has a smooth random prototype (4x4 noise upsampled); an
    example is its class prototype plus pixel noise, mapped to roughly the
    given per-channel mean/std and quantised like real images. Labels are
    balanced and shuffled.
    """
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    proto = torch.randn(num_classes, c, 4, 4, generator=g)
    proto = F.interpolate(proto, size=(h, w), mode="bilinear", align_corners=False)
    proto = proto / proto.std(dim=(1, 2, 3), keepdim=True)
    n = n_train + n_test
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    z = 0.8 * proto[y] + 0.6 * torch.randn(n, c, h, w, generator=g)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    x = (m + s * z).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


SYNTHETIC_SIZES = (2048, 512)  # small enough for tests, enough for a loss to fall
SYNTHETIC_SEED = 0


def load_synthetic() -> tuple[Split, Split]:
    return synthetic_images(*SYNTHETIC_SIZES, 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3, SYNTHETIC_SEED)


DIGITS_TEST_SIZE = 360  # of 1797: 1437 train / 360 test (about 80/20)
DIGITS_SPLIT_SEED = 0


def load_digits() -> tuple[Split, Split]:
    """sklearn's bundled 8x8 digits, values 0..16 scaled to [0, 1].

    Fixed split: ``train_test_split(test_size=360, stratify=labels,
    random_state=0)``, indices sorted, so 1437 train / 360 test with the
    class proportions of the whole set.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = torch.tensor(bunch.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    tr, te = train_test_split(
        np.arange(len(y)), test_size=DIGITS_TEST_SIZE, stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    tr, te = torch.as_tensor(np.sort(tr)), torch.as_tensor(np.sort(te))
    return (x[tr], y[tr]), (x[te], y[te])


def _mnist1d_args():
    from mnist1d.data import get_dataset_args

    return get_dataset_args()


def mnist1d_cache_path(root: pathlib.Path) -> pathlib.Path:
    """Cache file named by a hash of the generator arguments, so a change of
    the package's defaults makes a new file instead of reusing a stale one."""
    args = {k: v for k, v in vars(_mnist1d_args()).items() if k != "url"}
    digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    return root / "mnist1d" / f"mnist1d-{digest}.npz"


def _make_mnist1d() -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset

    # make_dataset reseeds Python's and NumPy's global RNGs; put them back so
    # loading data never changes the caller's random streams.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(_mnist1d_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}


def load_mnist1d(root: pathlib.Path) -> tuple[Split, Split]:
    """MNIST-1D (Greydanus 2020) from the package's generator, cached as .npz.

    Generated with ``make_dataset(get_dataset_args())`` (never the package's
    downloader): 4000 train / 1000 test sequences of 40 features, 10
    classes. The features are standardised by the generator, not in [0, 1],
    and are kept as they are. Generation takes ~2 s, hence the cache; it is
    written atomically (files.atomic_open) so concurrent trials are safe.
    """
    path = mnist1d_cache_path(root)
    arrays = None
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except Exception:  # truncated or foreign file: regenerate
            arrays = None
    if arrays is None:
        arrays = _make_mnist1d()
        try:
            with atomic_open(path, "wb") as f:
                np.savez(f, **arrays)
        except OSError as exc:  # read-only data dir: work without the cache
            warnings.warn(f"could not cache MNIST-1D in {path.parent}: {exc}", stacklevel=3)

    def split(x, y) -> Split:
        xt = torch.tensor(x, dtype=torch.float32).unsqueeze(1)  # (N, 1, 40)
        return xt, torch.tensor(y, dtype=torch.int64)

    return split(arrays["x"], arrays["y"]), split(arrays["x_test"], arrays["y_test"])


# --- user factories ("package.module:function") -----------------------------------


@dataclass
class FactoryData:
    train: Split
    test: Split
    num_classes: int


def load_factory(path: str, root: pathlib.Path) -> FactoryData:
    """Call ``package.module:function`` and turn its (train, test) into tensors.

    The function is called as ``function(data_dir=...)`` when it takes a
    ``data_dir`` argument (or ``**kwargs``), else with no arguments. Each of
    train and test is a torch Dataset yielding ``(x, int_label)`` or an
    ``(X, y)`` pair of tensors/arrays. uint8 inputs are treated as images in
    0..255 and delivered in [0, 1]; anything else as float32 unchanged.
    num_classes is ``len(train.classes)`` when present, else max label + 1.
    """
    if not is_import_path(path):
        raise DataError(f"dataset {path!r}: expected 'package.module:function'")
    try:
        fn = load_callable(path, "dataset")
    except ImportPathError as exc:  # one line naming the path and the cause
        raise DataError(exc) from None
    try:
        result = fn(data_dir=root) if _takes_data_dir(fn) else fn()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"dataset {path!r}: the factory failed ({type(exc).__name__}: {exc})") from None
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise DataError(f"dataset {path!r}: the factory must return (train, test), got {type(result).__name__}")
    train = _as_split(result[0], path, "train")
    test = _as_split(result[1], path, "test")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DataError(
            f"dataset {path!r}: train inputs {tuple(train[0].shape[1:])} and test inputs "
            f"{tuple(test[0].shape[1:])} differ in shape"
        )
    classes = getattr(result[0], "classes", None)
    top_label = max(int(train[1].max()), int(test[1].max()))
    num_classes = len(classes) if classes is not None else top_label + 1
    if top_label >= num_classes:
        raise DataError(f"dataset {path!r}: a label is >= the number of classes ({num_classes})")
    return FactoryData(train, test, num_classes)


def _takes_data_dir(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "data_dir" or p.kind is p.VAR_KEYWORD for p in params)


def _tensor(a) -> torch.Tensor:
    return a.detach() if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))


def _is_pair(obj) -> bool:
    """An (X, y) pair: two arrays, X with a batch axis, y one label per row."""
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        return False
    x, y = obj
    arrays = (torch.Tensor, np.ndarray)
    return isinstance(x, arrays) and isinstance(y, arrays) and x.ndim >= 2 and y.ndim == 1


def _as_split(obj, path: str, which: str) -> Split:
    try:
        if _is_pair(obj):
            x, y = _tensor(obj[0]), _tensor(obj[1])
        else:  # a map-style Dataset yielding (x, label)
            items = [obj[i] for i in range(len(obj))]
            if not items:
                raise ValueError("it is empty")
            x = torch.stack([_tensor(a) for a, _ in items])
            y = torch.tensor([int(b) for _, b in items])
    except Exception as exc:
        raise DataError(
            f"dataset {path!r}: cannot read the {which} set as a Dataset of (x, label) "
            f"or an (X, y) pair ({type(exc).__name__}: {exc})"
        ) from None
    y = y.reshape(-1)
    if len(x) != len(y) or len(y) == 0 or x.dim() < 2:
        raise DataError(
            f"dataset {path!r}: the {which} set needs N >= 1 inputs with matching labels, "
            f"got inputs {tuple(x.shape)} and {len(y)} labels"
        )
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise DataError(f"dataset {path!r}: {which} labels must be integers")
    y = y.to(torch.int64)
    if int(y.min()) < 0:
        raise DataError(f"dataset {path!r}: {which} labels must be >= 0")
    if x.dtype != torch.uint8:
        x = x.to(torch.float32)
    return x.contiguous(), y
