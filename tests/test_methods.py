"""Every method of aalr_ray.methods through the training-loop contract, on a tiny MLP."""
import io
import json
import math

import pytest
import torch
from torch import nn

from aalr_ray.controller import measure_loss
from aalr_ray.methods import METHODS, Method, MethodError, build_method, method_names

N, BATCH, FEATURES, CLASSES = 256, 32, 10, 3
STEPS = N // BATCH
ALL = ["aalr", "aalr-adam", "aalr-robust", "aalr-robust-adam", "adam", "clr", "dadapt", "dog", "plateau",
       "prodigy", "schedule-free", "sgd-hd", "sgdr", "step"]
PER_BATCH = {"clr", "dadapt", "dog", "prodigy", "sgd-hd", "sgdr"}  # the LR moves inside an epoch

_gen = torch.Generator().manual_seed(0)
X = torch.randn(N, FEATURES, generator=_gen)
Y = (X @ torch.randn(FEATURES, CLASSES, generator=_gen)).argmax(1)  # a linear teacher
loss_fn = nn.CrossEntropyLoss()


def train_batches():
    return [(X[i:i + BATCH], Y[i:i + BATCH]) for i in range(0, N, BATCH)]


def make_model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)  # BatchNorm exercises schedule-free's BN pass and DoG's BN default
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, CLASSES))


def build(name, model, epochs=8, **kwargs) -> Method:
    return build_method(name, model, epochs=epochs, steps_per_epoch=STEPS, model_name="mlp", **kwargs)


def run_epochs(method: Method, model: nn.Module, epochs: int, lrs: list | None = None,
               extras: list | None = None) -> list[float]:
    """The training loop's call order, exactly; returns each epoch's mean training loss."""
    losses = []
    for _ in range(epochs):
        method.train_mode()
        model.train()
        total = 0.0
        for x, y in train_batches():
            method.optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            method.optimizer.step()
            method.after_batch()
            total += float(loss.detach()) * len(y)
            if lrs is not None:
                lrs.append(method.current_lr())
        losses.append(total / N)
        extra = method.after_epoch(losses[-1])
        if extras is not None:
            extras.append(extra)
        evaluated = method.eval_model(model, train_batches)
        evaluated.eval()
        with torch.no_grad():
            evaluated(X)
    return losses


def started(name, seed=1, **kwargs):
    model = make_model(seed)
    method = build(name, model, **kwargs)
    method.start(measure_loss(model, train_batches(), loss_fn))
    return model, method


def test_registry_lists_every_method():
    assert method_names() == sorted(ALL) == sorted(METHODS)


# Margins (measured under ATEN_CPU_CAPABILITY=default and avx2, which agree to 1e-7 here): the
# 4th epoch's loss is 5-82 % below the 1st's (SGD-HD 5 %, DoG and D-Adapt 7-8 %).
@pytest.mark.cpu_sensitive
@pytest.mark.parametrize("name", ALL)
def test_training_loss_falls_and_lr_is_positive(name):
    model, method = started(name)
    initial = measure_loss(model, train_batches(), loss_fn)
    lrs, extras = [], []
    losses = run_epochs(method, model, 4, lrs, extras)  # half of the 8-epoch budget: cosine is not at 0
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] and losses[-1] < initial, losses
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs), lrs
    assert method.name == name and isinstance(method.optimizer, torch.optim.Optimizer)
    assert (method.controller is not None) == name.startswith("aalr")
    json.dumps(method.info, allow_nan=False)
    assert method.info["method"] == name
    if not name.startswith("aalr"):
        assert extras == [{}] * 4


@pytest.mark.parametrize("name", ALL)
def test_lr_moves_within_an_epoch_only_for_per_batch_methods(name):
    model, method = started(name)
    run_epochs(method, model, 1)
    lrs = [method.current_lr()]
    run_epochs(method, model, 1, lrs)
    inside = lrs[:-1]  # the LR each batch of the second epoch used
    if name in PER_BATCH:
        assert len(set(inside)) > 1, inside
    else:
        assert len(set(inside)) == 1, inside


@pytest.mark.parametrize("name,options", [(name, None) for name in ALL] + [
    ("aalr-robust", {"phase1_patience": 1}),  # phase 2: the best snapshot travels too
])
def test_state_dict_round_trip_continues_bit_exactly(name, options):
    model, method = started(name, options=options)
    run_epochs(method, model, 2)
    method.eval_model(model, train_batches)  # checkpoints are taken after the evaluation
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "method": method.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    twin = make_model(seed=2)  # different initial weights: everything must come from the state
    twin_method = build(name, twin, options=options)
    twin.load_state_dict(saved["model"])
    twin_method.load_state_dict(saved["method"])
    assert twin_method.current_lr() == method.current_lr()

    lrs_a, lrs_b, extras_a, extras_b = [], [], [], []
    losses_a = run_epochs(method, model, 2, lrs_a, extras_a)
    losses_b = run_epochs(twin_method, twin, 2, lrs_b, extras_b)
    assert losses_a == losses_b
    assert lrs_a == lrs_b and extras_a == extras_b
    for (key, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), key
    evaluated_a = method.eval_model(model, train_batches).state_dict()
    evaluated_b = twin_method.eval_model(twin, train_batches).state_dict()
    for key in evaluated_a:
        assert torch.equal(evaluated_a[key], evaluated_b[key]), key


@pytest.mark.parametrize("name", ALL)
def test_nan_batch_and_epoch_loss_do_not_crash(name):
    model, method = started(name)
    run_epochs(method, model, 1)
    method.train_mode()
    method.optimizer.zero_grad()
    loss = loss_fn(model(torch.full((BATCH, FEATURES), float("nan"))), Y[:BATCH])
    loss.backward()
    method.optimizer.step()  # NaN gradients: the loop fast-fails after this step
    method.after_batch()
    extra = method.after_epoch(float("nan"))
    if name.startswith("aalr"):
        assert extra["action"] == "restore_initial"  # phase 1: halve and reload theta_0
    method.eval_model(model, train_batches)
    method.train_mode()


@pytest.mark.parametrize("model_name,epochs,milestones,gamma,lr,nesterov", [
    ("resnet18", 200, [60, 120, 160], 0.2, 0.1, True),  # Cutout: 60/120/160 of 200
    ("resnet18", 10, [3, 6, 8], 0.2, 0.1, True),
    ("wrn-28-10", 100, [30, 60, 80], 0.2, 0.1, True),
    ("resnet20", 8, [4, 6], 0.1, 0.1, False),  # He et al.: 32k/48k of 64k iterations
    ("vgg16", 300, list(range(30, 300, 30)), 0.5, 0.05, False),  # chengyangfu: halve every 30 of 300
    ("vgg16-bn", 10, list(range(1, 10)), 0.5, 0.05, False),
    ("simplenet-v1", 540, [100, 190, 306, 390, 440], 0.1, 0.1, None),  # Adadelta, Coderx7 repo
    ("mnist1d-cnn", 20, [6, 12, 16], 0.2, 0.1, True),  # generic default: the Cutout schedule
    ("my.module:factory", 20, [6, 12, 16], 0.2, 0.1, True),
])
def test_step_milestones_land_at_the_documented_fractions(model_name, epochs, milestones, gamma,
                                                          lr, nesterov):
    method = build_method("step", make_model(), epochs=epochs, steps_per_epoch=STEPS,
                          model_name=model_name)
    assert method.info["milestone_epochs"] == milestones
    group = method.optimizer.param_groups[0]
    if nesterov is None:
        assert isinstance(method.optimizer, torch.optim.Adadelta)
    else:
        assert isinstance(method.optimizer, torch.optim.SGD)
        assert group["momentum"] == 0.9 and group["nesterov"] is nesterov
    method.optimizer.step()  # (no gradients: a no-op that keeps the scheduler's order check quiet)
    for done in range(epochs):  # `done` epochs trained: the next one uses this LR
        expected = lr * gamma ** sum(m <= done for m in milestones)
        assert method.current_lr() == pytest.approx(expected, rel=1e-9), done
        method.after_epoch(1.0)


def test_step_options_override_the_recipe():
    method = build_method("step", make_model(), epochs=10, steps_per_epoch=STEPS, model_name="resnet18",
                          options={"lr": 0.2, "milestones": [0.5], "gamma": 0.5})
    assert method.info["milestone_epochs"] == [5] and method.current_lr() == 0.2


def test_sgdr_restarts_on_epoch_boundaries():
    method = build("sgdr", make_model(), epochs=40)
    method.optimizer.step()  # no-op step (no gradients)
    lr_at = {}
    for epoch in range(31):
        lr_at[epoch] = method.current_lr()
        for i in range(STEPS):
            method.after_batch()
            if epoch == 0 and i == 0:
                lr_at[1 / STEPS] = method.current_lr()
        method.after_epoch(1.0)
    cosine = lambda t, period: 0.05 * (1 + math.cos(math.pi * t / period)) / 2  # noqa: E731
    assert lr_at[0] == 0.05 and lr_at[1 / STEPS] == pytest.approx(cosine(1 / STEPS, 10))
    assert lr_at[5] == pytest.approx(0.025)
    assert lr_at[10] == pytest.approx(0.05)  # restart; T_i = 20
    assert lr_at[20] == pytest.approx(0.025)
    assert lr_at[30] == pytest.approx(0.05)  # restart; T_i = 40


def test_clr_is_a_triangle_with_cycled_momentum():
    method = build("clr", make_model())
    method.optimizer.step()
    up = 4 * STEPS  # step_size_epochs = 4
    seen = []
    for _ in range(2 * up):
        seen.append((method.current_lr(), method.optimizer.param_groups[0]["momentum"]))
        method.after_batch()
    assert seen[0] == (pytest.approx(0.01), pytest.approx(0.9))
    assert seen[up] == (pytest.approx(0.1), pytest.approx(0.8))
    assert method.current_lr() == pytest.approx(0.01)


def test_unknown_name_or_option_is_a_one_line_error():
    with pytest.raises(MethodError) as err:
        build("sgd-with-magic", make_model())
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message
    assert all(name in message for name in ALL)
    with pytest.raises(MethodError) as err:
        build("adam", make_model(), options={"lr": 0.01, "momentum": 0.9})
    message = str(err.value)
    assert "\n" not in message and "'momentum'" in message
    assert all(key in message for key in ("lr", "betas", "eps"))


def test_options_override_defaults():
    method = build("adam", make_model(), options={"lr": 0.01})
    assert method.current_lr() == 0.01 and method.info["lr"] == 0.01
    method = build("sgd-hd", make_model(), options={"momentum": 0.9})
    assert method.info["variant"] == "SGDN-HD"


# Phase 1's two decisions: 0.90 < J(theta_0) = 1.11 (19 %), then 0.41 < 0.90 (55 %).
@pytest.mark.cpu_sensitive
@pytest.mark.parametrize("name", ["aalr", "aalr-robust"])
def test_aalr_after_epoch_reports_its_state(name):
    model, method = started(name)
    extras = []
    run_epochs(method, model, 2, extras=extras)
    for extra in extras:
        assert set(extra) == {"phase", "patience", "best_loss", "action"}
        assert extra["phase"] == 1 and extra["patience"] == 1 and extra["action"] == "continue"
        assert isinstance(extra["best_loss"], float)
    assert method.current_lr() == 0.1 == method.controller.lr


def test_aalr_robust_finish_reloads_the_best_weights():
    model = make_model()
    method = build("aalr-robust", model, options={"phase1_patience": 1})
    method.start(2.0)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    assert method.after_epoch(1.0)["action"] == "save_best"  # phase 1 over: snapshot
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert method.after_epoch(1.5)["action"] == "continue"  # first epoch of a 2-epoch window
    assert not torch.equal(model[0].weight, best["0.weight"])
    method.finish()
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[key]), key


def test_aalr_finish_keeps_the_last_weights():
    model = make_model()
    method = build("aalr", model, options={"phase1_patience": 1})
    method.start(2.0)
    method.after_epoch(1.0)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    last = model[0].weight.clone()
    method.finish()
    assert torch.equal(model[0].weight, last)


def test_schedule_free_switches_points_and_recomputes_batchnorm():
    model, method = started("schedule-free")
    run_epochs(method, model, 1)
    method.train_mode()
    y_weights = model[0].weight.clone()
    stats = model[1].running_mean.clone()
    assert method.eval_model(model, train_batches) is model
    assert method.optimizer.param_groups[0]["train_mode"] is False
    assert not torch.equal(model[0].weight, y_weights)  # x, the average, is evaluated
    assert not torch.equal(model[1].running_mean, stats)  # BN statistics measured at x
    method.train_mode()
    assert method.optimizer.param_groups[0]["train_mode"] is True
    torch.testing.assert_close(model[0].weight, y_weights)


def test_dog_evaluates_the_averaged_model():
    model, method = started("dog")
    run_epochs(method, model, 2)
    averaged = method.eval_model(model, train_batches)
    assert averaged is not model
    assert not torch.equal(averaged[0].weight, model[0].weight)
    assert method.info["reps_rel"] == 1e-4  # the model has BatchNorm
    plain = build("dog", nn.Sequential(nn.Linear(FEATURES, CLASSES)))
    assert plain.info["reps_rel"] == 1e-6


def test_prodigy_lr_is_d_times_the_cosine_schedule():
    model, method = started("prodigy")
    run_epochs(method, model, 1)
    group = method.optimizer.param_groups[0]
    assert method.current_lr() == pytest.approx(group["d"] * group["lr"])
    assert group["lr"] == pytest.approx((1 + math.cos(math.pi * STEPS / (8 * STEPS))) / 2)
