"""Dataset factories for tests/test_data.py ("data_factories:<function>")."""
import torch
from torch.utils.data import Dataset

SEEN_DATA_DIRS = []


def tensor_pair():
    """No arguments; (X, y) tensor pairs, 2x5x5 inputs, labels 0..2."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 2, 5, 5, generator=g)
    y = torch.arange(60) % 3
    return (x[:40], y[:40]), (x[40:], y[40:])


class _Items(Dataset):
    classes = ["a", "b", "c", "d", "e"]  # 5 classes although only 0..1 occur

    def __init__(self, n: int, offset: float) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return torch.full((4,), self.offset + i, dtype=torch.float64), i % 2


def dataset_with_dir(data_dir):
    """Takes data_dir; map-style Datasets yielding (1-D tensor, int)."""
    SEEN_DATA_DIRS.append(data_dir)
    return _Items(10, 0.0), _Items(4, 100.0)


def broken():
    raise RuntimeError("boom\nwith a second line")


def not_a_pair():
    return 42
