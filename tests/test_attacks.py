"""FGSM/PGD: constraints, strength, model left untouched, torchattacks agreement, config."""
import functools
import pickle

import pytest
import torch
from torch import nn

from aalr_ray.attacks import (
    AttackConfig,
    fgsm,
    fgsm_accuracy,
    make_inputs,
    pgd,
    pgd_accuracy,
    robust_accuracy,
)
from aalr_ray.controller import measure_loss
from aalr_ray.data import load_dataset
from aalr_ray.models import build_model

# Digits are 8x8 with 17 grey levels (steps of 1/16); 0.1 is a radius that
# visibly hurts an undefended model without destroying the digits.
EPS = 0.1
ALPHA = EPS / 4
STEPS = 10
ce = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _train(data, name, epochs, seed=0):
    """A few seconds of plain SGD: an undefended, accurate model."""
    spec = data.spec
    torch.manual_seed(seed)
    model = build_model(name, spec.num_classes, spec.input_shape, mean=spec.mean, std=spec.std)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(epochs):
        for x, y in data.batches("train", 32, seed=seed, epoch=epoch):
            opt.zero_grad()
            ce(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def models(digits):
    return {"mlp": _train(digits, "mlp", 8), "small-cnn": _train(digits, "small-cnn", 15)}


@pytest.fixture(scope="module")
def test_set(digits):
    (x, y), = digits.batches("test", 360, seed=0, epoch=0)
    return x, y


def _loss(model, x, y):
    with torch.no_grad():
        return float(ce(model(x), y))


ATTACKS = {
    "fgsm": functools.partial(fgsm, eps=EPS),
    "fgsm-rs": functools.partial(fgsm, eps=EPS, alpha=1.25 * EPS),  # Wong et al. 2020
    "pgd": functools.partial(pgd, eps=EPS, alpha=ALPHA, steps=STEPS),
    "pgd-no-rs": functools.partial(pgd, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False),
}


# ------------------------------------------------------------------ constraints
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_perturbation_stays_in_eps_ball_and_unit_box(models, test_set, attack):
    x, y = test_set
    # Push pixels to the edges of [0, 1] so clipping matters on both sides.
    edges = torch.tensor([0.0, 1e-3, 0.05, 0.95, 1 - 1e-3, 1.0])
    x = x.clone()
    x.view(-1)[: 6 * 1000] = edges.repeat(1000)
    torch.manual_seed(0)
    x_adv = ATTACKS[attack](models["small-cnn"], x, y)
    delta = x_adv - x
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    # Up to the rounding of x + delta in float32 (half an ulp of x).
    assert float(delta.abs().max()) <= EPS + 1e-6
    assert float(delta.abs().max()) >= ALPHA - 1e-6  # it did move
    assert not x_adv.requires_grad and x_adv.grad_fn is None


def test_plain_fgsm_is_one_step_of_eps(models, test_set):
    x, y = test_set
    x_adv = fgsm(models["mlp"], x, y, EPS)
    moved = x_adv - x
    # Each pixel moves by exactly +-eps, unless [0, 1] clips it (or its
    # gradient is exactly zero).
    full = (moved.abs() - EPS).abs() <= 1e-6
    clipped = (x_adv == 0) | (x_adv == 1)
    still = moved == 0
    assert bool((full | clipped | still).all())
    assert float(full.float().mean()) > 0.3


# ------------------------------------------------------------------ strength
@pytest.mark.parametrize("name", ["mlp", "small-cnn"])
def test_attacks_raise_the_loss_and_pgd_beats_fgsm(models, test_set, name):
    model, (x, y) = models[name], test_set
    torch.manual_seed(0)
    clean = _loss(model, x, y)
    by_fgsm = _loss(model, fgsm(model, x, y, EPS), y)
    by_pgd = _loss(model, pgd(model, x, y, EPS, ALPHA, STEPS), y)
    by_pgd_det = _loss(model, pgd(model, x, y, EPS, ALPHA, STEPS, random_start=False), y)
    assert by_fgsm > 2 * clean
    assert by_pgd >= by_fgsm and by_pgd_det >= by_fgsm

    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, len(y), 128)]
    clean_acc = robust_accuracy(model, batches, lambda m, xb, yb: xb)
    fgsm_acc = fgsm_accuracy(model, batches, EPS)
    pgd_acc = pgd_accuracy(model, batches, EPS, ALPHA, STEPS)
    assert clean_acc > 0.9
    assert pgd_acc <= fgsm_acc < clean_acc - 0.2


def test_robust_accuracy_limit_counts_only_the_first_examples(models, test_set):
    model, (x, y) = models["mlp"], test_set
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(y), 64)]
    seen = []

    def attack(m, xb, yb):
        assert not m.training  # crafted against the model in eval mode
        seen.append(len(yb))
        return fgsm(m, xb, yb, EPS)

    model.train()
    acc = robust_accuracy(model, batches, attack, limit=100)
    assert model.training  # restored
    model.eval()
    assert seen == [64, 36]
    assert acc == fgsm_accuracy(model, [(x[:100], y[:100])], EPS)
    with pytest.raises(ValueError, match="limit"):
        robust_accuracy(model, batches, attack, limit=0)


def test_random_start_uses_generator_or_global_rng(models, test_set):
    model, (x, y) = models["mlp"], test_set
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(pgd(model, x, y, EPS, ALPHA, 2))
    assert torch.equal(runs[0], runs[1])
    gen = [torch.Generator().manual_seed(7) for _ in range(2)]
    a, b = (fgsm(model, x, y, EPS, 1.25 * EPS, generator=g) for g in gen)
    assert torch.equal(a, b)
    assert not torch.equal(a, fgsm(model, x, y, EPS, 1.25 * EPS, generator=torch.Generator()))


# ------------------------------------------------------------------ model untouched
class Probe(nn.Module):
    """Records the mode of every forward it sees."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return x


def _bn_dropout_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                        nn.Dropout(0.5), Probe(), nn.Linear(32, 10))
    net[6].bias.requires_grad_(False)  # a frozen parameter must stay frozen
    net[1].weight.grad = torch.randn_like(net[1].weight)  # a preset grad ...
    net[6].weight.grad = torch.randn_like(net[6].weight)  # ... and None elsewhere
    net.train()
    for _ in range(3):  # non-trivial running statistics
        net(torch.rand(16, 1, 8, 8))
    return net


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("model_mode", ["eval", "train"])
@pytest.mark.parametrize("was_training", [True, False])
def test_model_mode_grads_and_buffers_left_as_they_were(attack, model_mode, was_training):
    net = _bn_dropout_net()
    net.train(was_training)
    probe = net[5]
    probe.modes.clear()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    x = torch.rand(16, 1, 8, 8).requires_grad_(True)
    y = torch.randint(0, 10, (16,))

    x_adv = ATTACKS[attack](net, x, y, model_mode=model_mode)

    assert probe.modes and set(probe.modes) == {model_mode == "train"}
    assert net.training is was_training
    for n, p in net.named_parameters():
        assert p.requires_grad is flags[n]
        if grads[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads[n]), n
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert x.grad is None
    assert not x_adv.requires_grad and x_adv.grad_fn is None


def test_eval_mode_attack_is_deterministic_and_works_under_no_grad():
    net = _bn_dropout_net().train()  # dropout on, but the attack runs in eval mode
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    a = pgd(net, x, y, EPS, ALPHA, 3, random_start=False)
    with torch.no_grad():
        b = pgd(net, x, y, EPS, ALPHA, 3, random_start=False)
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_mode_restored_when_the_model_raises():
    net = _bn_dropout_net().train()
    with pytest.raises(RuntimeError):  # wrong input size inside the forward
        fgsm(net, torch.rand(4, 1, 7, 7), torch.zeros(4, dtype=torch.long), EPS)
    assert net.training


# ------------------------------------------------------------------ torchattacks
@pytest.fixture(scope="module")
def torchattacks():
    # ImportError, not only ModuleNotFoundError: a --no-deps install whose
    # import fails should skip with the same hint rather than error.
    return pytest.importorskip(
        "torchattacks", exc_type=ImportError,
        reason="torchattacks is not installed or fails to import; install it with "
               "`pip install --no-deps torchattacks` to run the agreement tests")


@pytest.mark.parametrize("name", ["mlp", "small-cnn"])
def test_fgsm_and_pgd_match_torchattacks(torchattacks, models, test_set, name):
    model, (x, y) = models[name], test_set
    # torchattacks crafts in eval mode by default (Attack._model_training is
    # False until set_model_training_mode) and restores train mode after;
    # start in train mode to exercise that, our default is eval too.
    model.train()
    theirs = torchattacks.FGSM(model, eps=EPS)(x, y)
    assert model.training
    ours = fgsm(model, x, y, EPS)
    assert float((theirs - ours).abs().max()) <= 1e-6

    theirs = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False)(x, y)
    ours = pgd(model, x, y, EPS, ALPHA, STEPS, random_start=False)
    assert float((theirs - ours).abs().max()) <= 1e-6
    model.eval()


def test_pgd_random_start_accuracy_matches_torchattacks(torchattacks, models, test_set):
    model, (x, y) = models["small-cnn"], test_set
    torch.manual_seed(1)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)(x, y)
    with torch.no_grad():
        their_acc = float((model(theirs).argmax(1) == y).float().mean())
    torch.manual_seed(2)  # a different start: agreement within noise, not bitwise
    our_acc = pgd_accuracy(model, [(x, y)], EPS, ALPHA, STEPS, random_start=True)
    assert our_acc < 0.8  # the attack bites
    assert abs(our_acc - their_acc) <= 0.03


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("kwargs, words", [
    (dict(mode="cw"), ["'cw'", "natural, fgsm, pgd"]),
    (dict(mode="pgd", eps=0.0), ["eps", "0.0", "(0, 1]"]),
    (dict(mode="pgd", eps=-0.1), ["eps", "-0.1", "(0, 1]"]),
    (dict(mode="pgd", eps=8.0), ["eps", "8.0", "(0, 1]"]),
    (dict(mode="pgd", eps=float("nan")), ["eps", "nan"]),
    (dict(mode="pgd", steps=0), ["steps", "0", ">= 1"]),
    (dict(mode="pgd", steps=2.5), ["steps", "2.5"]),
    (dict(mode="pgd", alpha=0.0), ["alpha", "0.0", "(0, 1]"]),
    (dict(mode="fgsm", alpha=-1.0), ["alpha", "-1.0"]),
    (dict(mode="pgd", random_start="yes"), ["random_start", "'yes'"]),
    (dict(mode="pgd", model_mode="test"), ["'test'", "eval, train"]),
])
def test_config_errors_are_one_line_and_name_value_and_choices(kwargs, words):
    with pytest.raises(ValueError) as err:
        AttackConfig(**kwargs)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("spec, words", [
    ("bim", ["'bim'", "natural, fgsm, pgd"]),
    ("pgd:eps=0", ["eps", "0.0"]),
    ("pgd:eps=x", ["eps", "'x'"]),
    ("pgd:steps=0", ["steps", "0"]),
    ("pgd:steps=ten", ["steps", "'ten'"]),
    ("pgd:alpha=-2/255", ["alpha"]),
    ("pgd:radius=1", ["'radius=1'", "eps, alpha, steps, random_start, model_mode"]),
    ({"mode": "pgd", "radius": 1}, ["radius", "valid options"]),
])
def test_parse_errors_are_one_line(spec, words):
    with pytest.raises(ValueError) as err:
        AttackConfig.parse(spec)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_parse_and_defaults():
    assert AttackConfig.parse(None) == AttackConfig() and AttackConfig().mode == "natural"
    config = AttackConfig.parse("PGD: eps=8/255, alpha=2/255, steps=7, random_start=false")
    assert config == AttackConfig("pgd", 8 / 255, 2 / 255, 7, False)
    assert AttackConfig.parse({"mode": "fgsm", "eps": 0.1}) == AttackConfig("fgsm", 0.1)
    assert AttackConfig.parse(config) is config
    # Defaults: plain FGSM (no step size); PGD step eps / 4 = Madry's 2/255 at 8/255.
    assert AttackConfig("fgsm").step_size is None
    assert AttackConfig("pgd").step_size == pytest.approx(2 / 255)
    assert AttackConfig("pgd").steps == 10
    assert str(AttackConfig("pgd")).startswith("pgd(eps=0.0313725, alpha=0.00784314, steps=10")


def test_make_inputs_matches_the_attacks(models, test_set):
    model, (x, y) = models["mlp"], test_set
    assert make_inputs("natural") is None and make_inputs(None) is None
    plain = make_inputs(AttackConfig("fgsm", eps=EPS))
    assert torch.equal(plain(model, x, y), fgsm(model, x, y, EPS))
    det = make_inputs(f"pgd:eps={EPS},steps=3,random_start=false")
    assert torch.equal(det(model, x, y), pgd(model, x, y, EPS, EPS / 4, 3, random_start=False))
    assert pickle.loads(pickle.dumps(det)).keywords == det.keywords
    # The training run's seam: J(theta_0) under attack, measured inside no_grad.
    batches = [(x, y)]
    clean = measure_loss(model, batches, ce, train_mode=False)
    attacked = measure_loss(model, batches, ce, train_mode=False, make_inputs=det)
    assert attacked > clean
