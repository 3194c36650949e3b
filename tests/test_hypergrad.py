"""SGD-HD / SGDN-HD (aalr_ray.hypergrad.SGDHD) on f(x) = 0.5 x^T A x."""
import io

import pytest
import torch

from aalr_ray.hypergrad import SGDHD

A = torch.diag(torch.linspace(1.0, 10.0, 10))  # eigenvalues 1..10: SGD is stable for lr < 2/10
# beta scales with 1 / |g|^2: |g_0|^2 = 385 here, so the paper's beta = 1e-3 (for network
# losses with small gradients) would move alpha by ~0.4 per step; 1e-5 suits this problem.
BETA = 1e-5


def quadratic(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ A @ x


def run(optimizer, x, steps):
    """Minimise the quadratic for ``steps`` steps; return the loss and the LR of every step."""
    losses, lrs = [], []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = quadratic(x)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        lrs.append(optimizer.param_groups[0]["lr"])
    return losses, lrs


def start() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.ones(10))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_tiny_lr_grows_and_beats_fixed_lr(momentum):
    x_hd, x_fixed = start(), start()
    hd_losses, hd_lrs = run(SGDHD([x_hd], lr=1e-4, momentum=momentum, hypergrad_lr=BETA), x_hd, 100)
    fixed_losses, _ = run(SGDHD([x_fixed], lr=1e-4, momentum=momentum, hypergrad_lr=0.0), x_fixed, 100)
    assert hd_lrs[0] == 1e-4  # no previous direction at the first step: alpha_1 = alpha_0
    assert hd_lrs[10] > 1e-2  # consecutive gradients align, so alpha grows 100-fold
    assert hd_losses[-1] < 0.01 * fixed_losses[-1]
    assert hd_losses[-1] < 1e-3 * hd_losses[0]


def test_too_large_lr_shrinks_and_converges():
    x_hd, x_fixed = start(), start()
    hd_losses, hd_lrs = run(SGDHD([x_hd], lr=0.25, hypergrad_lr=BETA), x_hd, 200)
    fixed_losses, _ = run(SGDHD([x_fixed], lr=0.25, hypergrad_lr=0.0), x_fixed, 200)
    assert hd_lrs[1] < 0.25  # gradients alternate in sign along the stiff directions
    assert hd_lrs[-1] < 2 / 10  # back inside the stable range
    assert fixed_losses[-1] > fixed_losses[0]  # plain SGD at 0.25 diverges
    assert hd_losses[-1] < 1e-3 * hd_losses[0]


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.0, 0.1), (0.9, 0.0), (0.9, 0.1)])
def test_zero_hypergrad_lr_is_torch_sgd(momentum, weight_decay):
    x_hd, x_sgd = start(), start()
    run(SGDHD([x_hd], lr=0.05, momentum=momentum, weight_decay=weight_decay, hypergrad_lr=0.0), x_hd, 20)
    sgd = torch.optim.SGD([x_sgd], lr=0.05, momentum=momentum, nesterov=momentum > 0,
                          weight_decay=weight_decay)
    run(sgd, x_sgd, 20)
    torch.testing.assert_close(x_hd, x_sgd, rtol=1e-6, atol=1e-7)


def test_hypergradient_formula_one_step():
    """alpha_2 = alpha_1 + beta * g_2 . (g_1 + mu v_1) with v_1 = g_1 (Algorithm 5)."""
    x = start()
    alpha, beta, mu = 0.01, 0.002, 0.9
    opt = SGDHD([x], lr=alpha, momentum=mu, hypergrad_lr=beta)
    g1 = A @ x.detach()
    direction1 = g1 + mu * g1
    x1 = x.detach() - alpha * direction1
    g2 = A @ x1
    run(opt, x, 2)
    expected = alpha + beta * float(g2 @ direction1)
    assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_state_dict_round_trip_is_bit_identical(momentum):
    x = start()
    opt = SGDHD([x], lr=1e-3, momentum=momentum, weight_decay=1e-2, hypergrad_lr=BETA)
    run(opt, x, 10)
    buffer = io.BytesIO()
    torch.save({"x": x.detach().clone(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    y = torch.nn.Parameter(saved["x"].clone())
    resumed = SGDHD([y], lr=123.0, momentum=momentum, weight_decay=1e-2, hypergrad_lr=BETA)
    resumed.load_state_dict(saved["opt"])
    assert resumed.param_groups[0]["lr"] == opt.param_groups[0]["lr"]

    losses_a, lrs_a = run(opt, x, 10)
    losses_b, lrs_b = run(resumed, y, 10)
    assert losses_a == losses_b and lrs_a == lrs_b
    assert torch.equal(x, y)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        SGDHD([start()], lr=-1.0)
    with pytest.raises(ValueError):
        SGDHD([start()], lr=0.1, momentum=1.0)
    with pytest.raises(ValueError):
        SGDHD([start()], lr=0.1, hypergrad_lr=-1e-3)
