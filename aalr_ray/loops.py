"""Generic PyTorch epoch loops: one training epoch, and a loss measured without updates.

Nothing here knows about AALR: any model, optimizer, batches and loss work.
:class:`aalr_ray.controller.AALRController` takes their results (``start``
with :func:`measure_loss`, ``step`` with :func:`train_epoch`'s loss), and
:mod:`aalr_ray.train` runs them for every LR method.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager, Iterable

import torch

from .core import is_bad

__all__ = ["Batches", "train_epoch", "measure_loss", "LOSS_SCALE_FLOOR"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

# A GradScaler halves its scale at every step it skips (inf/NaN gradients) and doubles it
# after growth_interval clean steps, so a few skips are routine: while it finds its scale
# from 2**16, and each time it tries a larger one. Below 1 the scaled gradients are
# smaller than the true ones and still overflow fp16: the gradient itself is non-finite or
# beyond fp16's range, which is divergence, not a scale still settling.
LOSS_SCALE_FLOOR = 1.0


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                make_inputs: Callable | None = None, after_batch: Callable[[], None] | None = None,
                check_every: int | None = None, autocast: Callable[[], ContextManager] | None = None,
                scaler=None) -> float:
    """Train one epoch; return the mean training loss over examples.

    Fast fail: at the first bad (NaN/inf) batch loss the epoch ends and NaN is
    returned. The weights cannot recover, and AALR rolls them back anyway.
    ``make_inputs(model, x, y)`` may replace a batch's inputs before the
    update (the seam for adversarial training). ``after_batch()`` runs after
    every optimizer step (per-batch schedules). On CUDA the loss is checked
    every ``check_every`` (default 16) batches to avoid a sync per batch.

    Mixed precision: ``autocast()`` is entered around each forward pass and
    loss (e.g. ``lambda: torch.autocast("cuda", dtype=torch.bfloat16)``), and
    the mean loss is summed in fp32 whatever the forward's dtype. With
    ``scaler`` (a ``torch.amp.GradScaler``, for fp16) the backward pass and the
    step go through it; a skipped step leaves the weights as they were, and a
    skip that takes the scale below :data:`LOSS_SCALE_FLOOR` is a bad batch:
    the epoch ends with NaN, at the same checks as a bad loss.
    """
    model.train()
    autocast = autocast or contextlib.nullcontext
    total = None
    count = 0
    for i, (x, y) in enumerate(batches):
        if make_inputs is not None:
            x = make_inputs(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skipped on inf/NaN gradients
            scaler.update()
        if after_batch is not None:
            after_batch()
        batch_sum = at_least_fp32(loss.detach()) * y.shape[0]
        total = batch_sum if total is None else total + batch_sum
        count += y.shape[0]
        every = check_every or (16 if loss.is_cuda else 1)
        if (i + 1) % every == 0 and (is_bad(float(total)) or _scale_collapsed(scaler)):
            return math.nan
    if count == 0:
        raise ValueError("train_epoch got no batches")
    if _scale_collapsed(scaler):
        return math.nan
    return float(total) / count


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """A half-precision (autocast) result as fp32; fp32 and fp64 as they are (a float64 run stays float64)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _scale_collapsed(scaler) -> bool:
    """Whether the GradScaler skipped steps until its scale fell below LOSS_SCALE_FLOOR (a sync on CUDA)."""
    return scaler is not None and scaler.get_scale() < LOSS_SCALE_FLOOR


@torch.no_grad()
def measure_loss(model: torch.nn.Module, batches: Batches,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                 train_mode: bool = True, make_inputs: Callable | None = None,
                 autocast: Callable[[], ContextManager] | None = None) -> float:
    """Mean loss over ``batches`` without updating the weights.

    With ``train_mode=True`` the forward passes run as in training (batch
    statistics for BatchNorm, dropout on), so the result is comparable with
    :func:`train_epoch`'s mean loss; BatchNorm running statistics are put
    back afterwards, so the model leaves exactly as it came. This is how
    J(theta_0) is measured. ``autocast``: as in :func:`train_epoch`, so that
    the loss is measured in the arithmetic the training uses.
    """
    autocast = autocast or contextlib.nullcontext
    was_training = model.training
    saved_buffers = {k: v.clone() for k, v in model.named_buffers()} if train_mode else None
    model.train(train_mode)
    total, count = 0.0, 0
    try:
        for x, y in batches:
            if make_inputs is not None:
                with torch.enable_grad():
                    x = make_inputs(model, x, y)
            with autocast():
                loss = loss_fn(model(x), y)
            total += float(loss) * y.shape[0]
            count += y.shape[0]
    finally:
        if saved_buffers is not None:
            for name, buffer in model.named_buffers():
                buffer.copy_(saved_buffers[name])
        model.train(was_training)
    if count == 0:
        raise ValueError("measure_loss got no batches")
    return total / count
