"""Generic PyTorch epoch loops: one training epoch, and a loss measured without updates.

Nothing here knows about AALR: any model, optimizer, batches and loss work.
:class:`aalr_ray.controller.AALRController` takes their results (``start``
with :func:`measure_loss`, ``step`` with :func:`train_epoch`'s loss), and
:mod:`aalr_ray.train` runs them for every LR method.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from .core import is_bad

__all__ = ["Batches", "train_epoch", "measure_loss"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                make_inputs: Callable | None = None, after_batch: Callable[[], None] | None = None,
                check_every: int | None = None) -> float:
    """Train one epoch; return the mean training loss over examples.

    Fast fail: at the first bad (NaN/inf) batch loss the epoch ends and NaN is
    returned. The weights cannot recover, and AALR rolls them back anyway.
    ``make_inputs(model, x, y)`` may replace a batch's inputs before the
    update (the seam for adversarial training). ``after_batch()`` runs after
    every optimizer step (per-batch schedules). On CUDA the loss is checked
    every ``check_every`` (default 16) batches to avoid a sync per batch.
    """
    model.train()
    total = None
    count = 0
    for i, (x, y) in enumerate(batches):
        if make_inputs is not None:
            x = make_inputs(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if after_batch is not None:
            after_batch()
        batch_sum = loss.detach() * y.shape[0]
        total = batch_sum if total is None else total + batch_sum
        count += y.shape[0]
        every = check_every or (16 if loss.is_cuda else 1)
        if (i + 1) % every == 0 and is_bad(float(total)):
            return math.nan
    if count == 0:
        raise ValueError("train_epoch got no batches")
    return float(total) / count


@torch.no_grad()
def measure_loss(model: torch.nn.Module, batches: Batches,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                 train_mode: bool = True, make_inputs: Callable | None = None) -> float:
    """Mean loss over ``batches`` without updating the weights.

    With ``train_mode=True`` the forward passes run as in training (batch
    statistics for BatchNorm, dropout on), so the result is comparable with
    :func:`train_epoch`'s mean loss; BatchNorm running statistics are put
    back afterwards, so the model leaves exactly as it came. This is how
    J(theta_0) is measured.
    """
    was_training = model.training
    saved_buffers = {k: v.clone() for k, v in model.named_buffers()} if train_mode else None
    model.train(train_mode)
    total, count = 0.0, 0
    try:
        for x, y in batches:
            if make_inputs is not None:
                with torch.enable_grad():
                    x = make_inputs(model, x, y)
            total += float(loss_fn(model(x), y)) * y.shape[0]
            count += y.shape[0]
    finally:
        if saved_buffers is not None:
            for name, buffer in model.named_buffers():
                buffer.copy_(saved_buffers[name])
        model.train(was_training)
    if count == 0:
        raise ValueError("measure_loss got no batches")
    return total / count
