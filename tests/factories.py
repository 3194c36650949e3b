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


class _NaNInEpochs(torch.nn.Module):
    """A model that outputs NaN while training in chosen data epochs of one seed.

    Every training path seeds torch's global RNG with ``epoch_seed(seed, epoch)``
    right before each data epoch (aalr_ray.train.TrainingRun, and so the Ray
    trainable; aalr_ray.examples.pbt_trainable), so the epoch is
    ``torch.initial_seed()``: the NaN falls in the same epoch in every path and
    on every CPU, whatever the losses before it were. Eval-mode forwards (test
    metrics) and the J(theta_0) pass (epoch 0) are never NaN.
    """

    def __init__(self, net, seeds):
        super().__init__()
        self.net = net
        self.seeds = frozenset(seeds)

    def forward(self, x):
        out = self.net(x)
        if self.training and torch.initial_seed() in self.seeds:
            return out * float("nan")
        return out


# The data epochs (of seed 0) in which cnn_nan_in_epochs outputs NaN.
NAN_SEED, NAN_EPOCHS = 0, (2, 9)


def cnn_nan_in_epochs(num_classes, input_shape):
    """mnist1d-cnn (ConvBase: the same weights from the same seed) that outputs NaN
    in data epochs NAN_EPOCHS of seed NAN_SEED."""
    from aalr_ray.models import build_model
    from aalr_ray.train import epoch_seed

    net = build_model("mnist1d-cnn", num_classes, input_shape)
    return _NaNInEpochs(net, [epoch_seed(NAN_SEED, epoch) for epoch in NAN_EPOCHS])


class _EpochCountingMLP(_SlowMLP):
    """A slow MLP that logs each data epoch it starts training, to count epochs trained twice.

    Every training path seeds torch's global RNG with ``epoch_seed(seed, epoch)``
    right before a data epoch, so ``torch.initial_seed()`` names the (seed, epoch)
    being trained. The first training-mode forward under a new seed appends that
    seed to the file named by $AALR_EPOCH_LOG (all of a test's Ray nodes run on
    this machine and share it); rank 0 alone logs in a data-parallel run.
    """

    def forward(self, x):
        import os

        seed = torch.initial_seed()
        if self.training and seed != getattr(self, "_logged_seed", None):
            self._logged_seed = seed
            import torch.distributed as dist

            path = os.environ.get("AALR_EPOCH_LOG")
            if path and not (dist.is_initialized() and dist.get_rank() != 0):
                with open(path, "a") as log:
                    log.write(f"{seed}\n")
        return super().forward(x)


def epoch_counting_mlp(num_classes, input_shape):
    return _EpochCountingMLP(num_classes, input_shape)
