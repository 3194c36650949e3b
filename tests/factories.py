"""Model factories that Ray workers import by path in the tests ("factories:<function>")."""
import torch


class _NaNNet(torch.nn.Module):
    """A model whose every output is NaN: its loss is NaN from the first epoch."""

    def __init__(self, num_classes, input_shape):
        super().__init__()
        size = 1
        for d in input_shape:
            size *= d
        self.linear = torch.nn.Linear(size, num_classes)

    def forward(self, x):
        return self.linear(x.flatten(1)) * float("nan")


def nan_model(num_classes, input_shape):
    return _NaNNet(num_classes, input_shape)


class _SlowMLP(torch.nn.Module):
    """A small MLP that sleeps in every forward pass, so a test can interrupt a run mid-way."""

    def __init__(self, num_classes, input_shape, delay_s=0.01):
        super().__init__()
        size = 1
        for d in input_shape:
            size *= d
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(size, 32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, num_classes))
        self.delay_s = delay_s

    def forward(self, x):
        import time

        time.sleep(self.delay_s)
        return self.net(x)


def slow_mlp(num_classes, input_shape):
    return _SlowMLP(num_classes, input_shape)
