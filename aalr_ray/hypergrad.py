"""SGD with hypergradient descent on the learning rate (SGD-HD / SGDN-HD).

Baydin, Cornish, Martinez Rubio, Schmidt & Wood, "Online learning rate
adaptation with hypergradient descent", ICLR 2018. Written from the paper's
equations (its Section 2 and Algorithms 4 and 5); no maintained package ships
it.

Derivation. An optimizer updates theta_t = theta_{t-1} + u_t(alpha), so the
loss at the point where the next gradient is taken depends on the LR through
the previous update:

    d f(theta_{t-1}) / d alpha = grad f(theta_{t-1}) . d u_{t-1} / d alpha
                               = g_t . grad_alpha u_{t-1}        =: h_t

and one gradient step on alpha with the hypergradient LR beta gives

    alpha_t = alpha_{t-1} - beta * h_t.

* SGD (Algorithm 4): u_t = -alpha g_t, so grad_alpha u_{t-1} = -g_{t-1} and
  alpha_t = alpha_{t-1} + beta * g_t . g_{t-1}: the LR grows while consecutive
  gradients point the same way and shrinks when they alternate (overshoot).
* SGD with Nesterov momentum (SGDN, Algorithm 5): v_t = mu v_{t-1} + g_t,
  u_t = -alpha (g_t + mu v_t), so grad_alpha u_{t-1} = -(g_{t-1} + mu v_{t-1})
  (the paper ignores v's own dependence on alpha) and
  alpha_t = alpha_{t-1} + beta * g_t . (g_{t-1} + mu v_{t-1}).

Both read as alpha_t = alpha_{t-1} + beta * g_t . d_{t-1} with d the previous
step's direction (the update is -alpha * d). The first step has no previous
direction (grad_alpha u_0 = 0), so alpha_1 = alpha_0.

alpha is one scalar per param group, kept in ``param_group["lr"]`` so that
``state_dict()`` round-trips it and LR readers see the adapted value; the dot
product runs over all parameters of the group, as the paper's single global
alpha does. Weight decay is the L2 form: ``weight_decay * theta`` is added to
g_t before both the hypergradient and the update (it is part of f). The paper
does not clip alpha, and neither do we: a negative alpha ascends, which makes
the next gradients align and pushes alpha back up.

Cost: one extra parameter-sized buffer (the previous direction) and one
host sync per step (the dot product becomes the Python float LR).
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

__all__ = ["SGDHD"]


class SGDHD(Optimizer):
    """SGD-HD (``momentum=0``) or SGDN-HD (``momentum>0``, Nesterov as in the paper).

    Args:
        params: parameters or param groups.
        lr: alpha_0, the initial learning rate (adapted every step).
        momentum: mu; 0 is SGD-HD, > 0 is SGDN-HD with Nesterov momentum.
        weight_decay: L2 coefficient added to the gradient.
        hypergrad_lr: beta, the learning rate of the learning rate.

    With ``hypergrad_lr=0`` this is exactly ``torch.optim.SGD`` (plain, or with
    ``nesterov=True, dampening=0`` when ``momentum > 0``).
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 hypergrad_lr: float = 1e-3):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not (math.isfinite(hypergrad_lr) and hypergrad_lr >= 0):
            raise ValueError(f"hypergrad_lr must be a finite number >= 0, got {hypergrad_lr!r}")
        defaults = dict(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay),
                        hypergrad_lr=float(hypergrad_lr))
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            mu, wd, beta = group["momentum"], group["weight_decay"], group["hypergrad_lr"]
            grads = [p.grad.add(p, alpha=wd) if wd != 0 else p.grad for p in params]

            # h_t = g_t . grad_alpha u_{t-1} = -(g_t . d_{t-1});  alpha_t = alpha_{t-1} - beta h_t
            dots = [torch.sum(g * self.state[p]["prev_direction"])
                    for p, g in zip(params, grads) if "prev_direction" in self.state[p]]
            if dots and beta != 0:
                group["lr"] = group["lr"] + beta * float(torch.stack(dots).sum())
            alpha = group["lr"]

            for p, g in zip(params, grads):
                state = self.state[p]
                if mu != 0:
                    buf = state.get("momentum_buffer")
                    if buf is None:  # v_0 = 0
                        buf = state["momentum_buffer"] = torch.zeros_like(p)
                    buf.mul_(mu).add_(g)  # v_t = mu v_{t-1} + g_t
                    direction = g.add(buf, alpha=mu)  # g_t + mu v_t
                else:
                    direction = g
                p.add_(direction, alpha=-alpha)  # u_t = -alpha_t d_t
                # Copy, never alias: with mu = wd = 0, direction IS p.grad, which
                # the next backward() accumulates into or zero_grad() clears.
                prev = state.get("prev_direction")
                if prev is None:
                    state["prev_direction"] = direction.detach().clone()
                else:
                    prev.copy_(direction)
        return loss
