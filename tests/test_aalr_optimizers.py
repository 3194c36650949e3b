"""Issue 19: AALR over Adam, AdamW and any torch optimizer.

The controller's actions are forced by scripted losses (never by a real
trajectory), and the optimizer state after each one is compared with what it
must be: empty after RESTORE_INITIAL, the SAVE_BEST snapshot after
RESTORE_BEST, untouched after CONTINUE and SAVE_BEST.
"""

import copy
import io
import json
import math

import pytest
import torch
import yaml
from torch import nn

from aalr_ray.cli import main
from aalr_ray.controller import AALRController
from aalr_ray.core import Action
from aalr_ray.grid import GridError, expand, load_grid, option_problems, parse_grid
from aalr_ray.methods import METHODS, MethodError, build_method, method_names
from aalr_ray.train import RunConfig, TrainingRun

NAN = float("nan")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
CHOICES = "sgd, adam, adamw, or an import path package.module:Class"


class PlainSGD(torch.optim.Optimizer):
    """An optimizer from outside torch.optim, named by import path; it takes no weight_decay."""

    def __init__(self, params, lr=0.05, scale=1.0):
        super().__init__(params, {"lr": lr, "scale": scale})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] * group["scale"])


NOT_AN_OPTIMIZER = object()


# ---------------------------------------------------------------- helpers
def two_group_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def two_group_optimizer(kind, model, amsgrad=False):
    # The second group's LR is 10x the first's: AALR must keep that ratio.
    return OPTIMIZERS[kind]([{"params": model[0].parameters()},
                             {"params": model[2].parameters(), "lr": 1e-2}],
                            lr=1e-3, weight_decay=5e-4, amsgrad=amsgrad)


_gen = torch.Generator().manual_seed(1)
X, Y = torch.randn(16, 4, generator=_gen), torch.randint(0, 3, (16,), generator=_gen)


def train(model, optimizer, steps=2):
    """Real optimizer steps, so the moment estimates are non-zero and move."""
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X), Y).backward()
        optimizer.step()


def opt_state(optimizer) -> dict:
    """The per-parameter state (exp_avg, exp_avg_sq, step, ...) as cloned tensors."""
    return copy.deepcopy(optimizer.state_dict()["state"])


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same(a[key], b[key])
        else:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


def assert_lrs(optimizer, lr):
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr, 10 * lr], rel=1e-12)


def moment_keys(kind, amsgrad):
    return {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad else set())


def one_step_matches_a_fresh_optimizer(kind, model, optimizer, state_dict, amsgrad=False):
    """One step of the controlled optimizer equals one step of a brand-new optimizer that
    loads ``state_dict`` (or nothing) at the same weights and LRs: the state is exact."""
    twin_model = copy.deepcopy(model)
    twin = two_group_optimizer(kind, twin_model, amsgrad)
    if state_dict is not None:
        twin.load_state_dict(state_dict)
    for group, mine in zip(twin.param_groups, optimizer.param_groups):
        group["lr"] = mine["lr"]
    train(model, optimizer, 1)
    train(twin_model, twin, 1)
    assert_same(weights(model), weights(twin_model))
    assert_same(opt_state(optimizer), opt_state(twin))


# --------------------------------------------- the actions, for Adam and AdamW
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("best_on_disk", [False, True])
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_every_action_sets_the_optimizer_state_it_must(kind, best_on_disk, amsgrad, tmp_path):
    model = two_group_model()
    optimizer = two_group_optimizer(kind, model, amsgrad)
    aalr = AALRController(model, optimizer, max_epochs=20, initial_lr=1e-3, phase1_patience=2,
                          best_path=tmp_path / "best.pt" if best_on_disk else None)
    aalr.start(2.3)
    theta_0 = weights(model)
    assert optimizer.state_dict()["state"] == {}
    assert_lrs(optimizer, 1e-3)

    # Phase 1: 2.0 <= L* = 2.3 -> CONTINUE leaves weights and moments alone.
    train(model, optimizer)
    before, trained = opt_state(optimizer), weights(model)
    assert set(before[0]) == moment_keys(kind, amsgrad) and float(before[0]["step"]) == 2
    assert aalr.step(2.0) is Action.CONTINUE
    assert_same(opt_state(optimizer), before)
    assert_same(weights(model), trained)
    assert_lrs(optimizer, 1e-3)

    # 2.5 > L* = 2.0 -> RESTORE_INITIAL: theta_0, no moments, no step count, LR halved.
    train(model, optimizer)
    assert aalr.step(2.5) is Action.RESTORE_INITIAL
    assert optimizer.state_dict()["state"] == {} and len(optimizer.state) == 0
    assert_same(weights(model), theta_0)
    assert_lrs(optimizer, 5e-4)
    one_step_matches_a_fresh_optimizer(kind, model, optimizer, None, amsgrad)

    # Two epochs that do not worsen the loss -> SAVE_BEST (phase 2, LR doubled): moments untouched.
    assert aalr.step(2.2) is Action.CONTINUE
    train(model, optimizer)
    best_state, best_weights = opt_state(optimizer), weights(model)
    best_state_dict = copy.deepcopy(optimizer.state_dict())
    assert float(best_state[0]["step"]) == 3
    assert aalr.step(1.8) is Action.SAVE_BEST
    assert_same(opt_state(optimizer), best_state)
    assert_lrs(optimizer, 1e-3)

    # More training moves the moments; a NaN -> RESTORE_BEST: the SAVE_BEST moments, new LR over them.
    train(model, optimizer, 3)
    assert float(opt_state(optimizer)[0]["step"]) == 6
    assert aalr.step(NAN) is Action.RESTORE_BEST
    assert_same(opt_state(optimizer), best_state)
    assert_same(weights(model), best_weights)
    assert_lrs(optimizer, 5e-4)
    for group in optimizer.param_groups:  # every other hyperparameter is the optimizer's own
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8 and group["weight_decay"] == 5e-4
    one_step_matches_a_fresh_optimizer(kind, model, optimizer, best_state_dict, amsgrad)

    # finish() with final="best" reloads the same snapshot at the current LR.
    aalr.final = "best"
    assert aalr.finish()
    assert_same(opt_state(optimizer), best_state)
    assert_same(weights(model), best_weights)
    assert_lrs(optimizer, 5e-4)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_robust_restores_and_a_resumed_controller_restore_the_saved_moments(kind):
    """aalr-robust's two extra RESTORE_BEST branches (a collapse to >= J(theta_0), a failed
    second try), the second one after a checkpoint round trip of controller and optimizer."""
    model = two_group_model()
    optimizer = two_group_optimizer(kind, model)
    aalr = AALRController(model, optimizer, max_epochs=30, initial_lr=1e-3, phase1_patience=1,
                          collapse_is_divergence=True, restore_on_decrease=True)
    aalr.start(2.3)
    train(model, optimizer)
    best_state, best_weights = opt_state(optimizer), weights(model)
    assert aalr.step(1.5) is Action.SAVE_BEST  # phase 2 at 2e-3, p = 1, windows of 2 epochs
    assert_lrs(optimizer, 2e-3)

    train(model, optimizer)
    assert aalr.step(2.4) is Action.RESTORE_BEST  # 2.4 >= J(theta_0) = 2.3: collapsed
    assert_same(opt_state(optimizer), best_state)
    assert_same(weights(model), best_weights)
    assert_lrs(optimizer, 1e-3)

    # Save and resume: a fresh model, optimizer and controller from the checkpoint.
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "aalr": aalr.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model = two_group_model()
    optimizer = two_group_optimizer(kind, model)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    aalr = AALRController(model, optimizer, max_epochs=30)
    aalr.load_state_dict(saved["aalr"])
    assert_lrs(optimizer, 1e-3)

    # Window p = 2 (3 epochs), twice without gain -> halve and RESTORE_BEST (restore_on_decrease).
    for loss in (1.6, 1.6, 1.6, 1.6, 1.6):
        train(model, optimizer)
        assert aalr.step(loss) is Action.CONTINUE
    train(model, optimizer)
    assert aalr.step(1.6) is Action.RESTORE_BEST
    assert_same(opt_state(optimizer), best_state)
    assert_same(weights(model), best_weights)
    assert_lrs(optimizer, 5e-4)


def test_a_custom_optimizer_with_group_state_is_reset_and_restored():
    """Any Optimizer: whatever it keeps in state_dict() (here a per-parameter buffer) follows the actions."""

    class Counting(PlainSGD):
        @torch.no_grad()
        def step(self, closure=None):
            super().step(closure)
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["count"] = self.state[p].get("count", torch.zeros(())) + 1

    model = two_group_model()
    optimizer = Counting(model.parameters(), lr=0.05)
    aalr = AALRController(model, optimizer, max_epochs=10, initial_lr=0.05, phase1_patience=1)
    aalr.start(2.3)
    train(model, optimizer, 2)
    assert aalr.step(2.4) is Action.RESTORE_INITIAL and optimizer.state_dict()["state"] == {}
    train(model, optimizer, 1)
    saved = opt_state(optimizer)
    assert aalr.step(2.0) is Action.SAVE_BEST
    train(model, optimizer, 4)
    assert aalr.step(NAN) is Action.RESTORE_BEST
    assert_same(opt_state(optimizer), saved)
    assert float(saved[0]["count"]) == 1
    # 0.05 -> 0.025 (restore_initial) -> 0.05 (save_best) -> 0.025 (restore_best); its own "scale" kept.
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025) and optimizer.param_groups[0]["scale"] == 1.0


# ------------------------------------------------------------ the methods
def tiny_method(name, options=None, weight_decay=5e-4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, build_method(name, model, epochs=10, steps_per_epoch=1, model_name="mlp",
                               weight_decay=weight_decay, options=options)


def test_the_adam_methods_are_registered_with_their_defaults():
    assert {"aalr-adam", "aalr-robust-adam"} <= set(method_names())
    robust = ("collapse_is_divergence", "restore_on_decrease", "final")
    for name, base in (("aalr-adam", "aalr"), ("aalr-robust-adam", "aalr-robust")):
        defaults, base_defaults = METHODS[name].defaults, METHODS[base].defaults
        assert defaults["optimizer"] == "adam" and defaults["lr"] == 1e-3
        assert {k: v for k, v in defaults.items() if k not in ("optimizer", "lr")} == \
            {k: v for k, v in base_defaults.items() if k not in ("optimizer", "lr")}
        assert option_problems(name, dict(defaults)) == []
        _, method = tiny_method(name)
        assert type(method.optimizer) is torch.optim.Adam and method.current_lr() == 1e-3
        group = method.optimizer.param_groups[0]
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8 and group["weight_decay"] == 5e-4
        assert method.info["optimizer_class"] == "torch.optim.adam.Adam" and method.info["momentum"] is None
        assert [method.controller.final, method.controller.core.collapse_is_divergence] == \
            [base_defaults["final"], base_defaults["collapse_is_divergence"]]
    assert METHODS["aalr-robust-adam"].defaults[robust[0]] and not METHODS["aalr-adam"].defaults[robust[0]]


@pytest.mark.parametrize("name", ["aalr", "aalr-adam"])
@pytest.mark.parametrize("option, value", [("restore_if_worse", True), ("significant_gain", True), ("judge", "mean")])
def test_the_ablation_options_reach_the_core_off_by_default(name, option, value):
    _, default = tiny_method(name)
    _, chosen = tiny_method(name, {option: value})
    assert getattr(default.controller.core, option) == {"judge": "last"}.get(option, False)
    assert getattr(chosen.controller.core, option) == value


def test_restore_if_worse_reloads_the_best_weights_only_when_the_loss_is_worse():
    """The controller acts on the core's RESTORE_BEST of a failed, worse second try; a merely
    noisy one keeps the weights it trained."""
    for last_loss, expected in ((1.52, Action.RESTORE_BEST), (1.51, Action.CONTINUE)):
        model = two_group_model()
        optimizer = two_group_optimizer("adam", model)
        aalr = AALRController(model, optimizer, max_epochs=30, initial_lr=1e-3, phase1_patience=1,
                              restore_if_worse=True)
        aalr.start(2.3)
        train(model, optimizer)
        assert aalr.step(1.5) is Action.SAVE_BEST  # L* = 1.5; windows of 2 epochs
        best_weights = weights(model)
        for loss in (1.6, 1.6, 1.6):  # no gain, then a second try
            train(model, optimizer)
            assert aalr.step(loss) is Action.CONTINUE
        train(model, optimizer)
        trained = weights(model)
        assert aalr.step(last_loss) is expected
        assert_same(weights(model), best_weights if expected is Action.RESTORE_BEST else trained)
        assert_lrs(optimizer, 1e-3)  # 2e-3 in phase 2, halved either way


def test_aalr_stays_sgd_with_momentum_0_9_and_lr_0_1():
    for name in ("aalr", "aalr-robust"):
        _, method = tiny_method(name)
        assert type(method.optimizer) is torch.optim.SGD and method.current_lr() == 0.1
        group = method.optimizer.param_groups[0]
        assert group["momentum"] == 0.9 and group["nesterov"] is False and group["weight_decay"] == 5e-4
        assert method.info["momentum"] == 0.9 and method.info["optimizer"] == "sgd"
    _, method = tiny_method("aalr", {"optimizer_options": {"nesterov": True}, "momentum": 0.8})
    assert method.optimizer.param_groups[0]["nesterov"] is True
    assert method.optimizer.param_groups[0]["momentum"] == 0.8


def test_optimizer_and_optimizer_options_pass_through():
    _, method = tiny_method("aalr", {"optimizer": "adamw", "optimizer_options": {"betas": [0.9, 0.99], "eps": 1e-7}})
    group = method.optimizer.param_groups[0]
    assert type(method.optimizer) is torch.optim.AdamW and group["betas"] == (0.9, 0.99) and group["eps"] == 1e-7
    assert group["lr"] == 0.1 and group["weight_decay"] == 5e-4  # aalr's own lr; the run's weight decay
    assert method.info["weight_decay_form"] == "decoupled" and method.info["optimizer_options"]["betas"] == [0.9, 0.99]
    _, method = tiny_method("aalr", {"optimizer": "torch.optim:RMSprop", "momentum": 0.5, "lr": 0.01})
    assert type(method.optimizer) is torch.optim.RMSprop and method.optimizer.param_groups[0]["momentum"] == 0.5
    _, method = tiny_method("aalr-adam", {"optimizer": f"{__name__}:PlainSGD", "optimizer_options": {"scale": 0.5}},
                            weight_decay=0)
    assert type(method.optimizer) is PlainSGD and method.optimizer.param_groups[0]["scale"] == 0.5
    with pytest.raises(MethodError, match="takes no weight_decay; run it with weight decay 0"):
        tiny_method("aalr", {"optimizer": f"{__name__}:PlainSGD"})


def test_aalr_adam_through_the_method_hooks():
    """after_epoch with scripted losses: the same state semantics through aalr-adam's Method."""
    model, method = tiny_method("aalr-adam", {"phase1_patience": 1})
    method.start(2.3)
    train(model, method.optimizer)
    assert method.after_epoch(2.5)["action"] == "restore_initial"
    assert method.optimizer.state_dict()["state"] == {} and method.current_lr() == 5e-4
    train(model, method.optimizer)
    saved = opt_state(method.optimizer)
    assert method.after_epoch(2.0)["action"] == "save_best" and method.current_lr() == 1e-3
    train(model, method.optimizer)
    assert method.after_epoch(NAN)["action"] == "restore_best"
    assert_same(opt_state(method.optimizer), saved)
    assert method.current_lr() == 5e-4


# ------------------------------------------------------------ bad input
BAD_OPTIONS = [
    ({"optimizer": "adamx"}, "optimizer", ["unknown optimizer 'adamx'", CHOICES]),
    ({"optimizer": f"{__name__}:NOT_AN_OPTIMIZER"}, "optimizer", ["not a torch.optim.Optimizer subclass", CHOICES]),
    ({"optimizer": "torch.nn:Linear"}, "optimizer", ["not a torch.optim.Optimizer subclass", CHOICES]),
    ({"optimizer": "no_such_pkg_19.optim:Fast"}, "optimizer", ["does not import", "No module named", CHOICES]),
    ({"optimizer": "torch.optim:LBFGS"}, "optimizer", ["needs a closure", CHOICES]),
    ({"optimizer": 3}, "optimizer", ["expected a string", CHOICES]),
    ({"optimizer": "adam", "optimizer_options": {"betaz": [0.9, 0.99]}}, "optimizer_options",
     ["takes no option 'betaz'", "valid optimizer_options: amsgrad, betas"]),
    ({"optimizer": "adam", "optimizer_options": {"betas": [1.5, 0.99]}}, "optimizer_options",
     ["does not take these options", "Invalid beta parameter"]),
    ({"optimizer": "adamw", "optimizer_options": {"lr": 0.1}}, "optimizer_options", ["the initial LR is option lr"]),
    ({"optimizer": "adam", "momentum": 0.9}, "momentum", ["takes no momentum", "betas"]),
    ({"optimizer_options": [0.9]}, "optimizer_options", ["expected a mapping"]),
]


@pytest.mark.parametrize("options, key, fragments", BAD_OPTIONS, ids=lambda v: str(v)[:40])
def test_bad_optimizer_options_are_one_line_exit_2_and_nothing_written(tmp_path, capsys, options, key, fragments):
    out, data = tmp_path / "run.jsonl", tmp_path / "data"
    argv = ["train", "--model", "mnist1d-cnn", "--dataset", "mnist1d", "--method", "aalr", "--epochs", "2",
            "--data-dir", str(data), "--out", str(out)]
    for name, value in options.items():
        argv += ["--option", f"{name}={value if isinstance(value, str) else json.dumps(value)}"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"aalr-ray: error: --option {key}: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists() and not data.exists()  # refused before the data loaded


GRID = {"name": "g19", "epochs": 2, "seeds": 2, "datasets": ["mnist1d"], "models": ["mnist1d-cnn"],
        "methods": ["aalr-adam"]}


@pytest.mark.parametrize("options, key, fragments", BAD_OPTIONS, ids=lambda v: str(v)[:40])
def test_bad_optimizer_options_in_grid_files(tmp_path, capsys, options, key, fragments):
    with pytest.raises(GridError) as info:
        parse_grid({**GRID, "method_options": {"aalr-adam": options}}, source="g.yaml")
    assert len(info.value.problems) == 1
    line = info.value.problems[0]
    assert line.startswith(f"g.yaml: method_options.aalr-adam.{key}: "), line
    for fragment in fragments:
        assert fragment in line, line
    # Through the command: exit 2, one line, no storage written, Ray never started.
    job = tmp_path / "g.yaml"
    job.write_text(yaml.safe_dump({**GRID, "method_options": {"aalr-adam": options}}))
    assert main(["grid", str(job), "--storage", str(tmp_path / "results")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"method_options.aalr-adam.{key}: " in lines[0], lines
    assert not (tmp_path / "results").exists()
    import ray

    assert not ray.is_initialized()


def test_an_override_that_gives_adam_a_momentum_is_refused_for_its_trials():
    with pytest.raises(GridError) as info:
        parse_grid({**GRID, "methods": ["aalr", "aalr-adam"],
                    "overrides": [{"match": {"model": "mnist1d-cnn"}, "set": {"method_options": {"momentum": 0.8}}}]},
                   source="g.yaml")
    assert info.value.problems == [
        "g.yaml: overrides[0].set.method_options.momentum: optimizer 'adam' takes no momentum; leave option "
        "momentum null (its own options go in optimizer_options: amsgrad, betas, capturable, decoupled_weight_decay, "
        "differentiable, eps, foreach, fused, maximize) (in trials of method 'aalr-adam')"]


def test_a_custom_optimizer_without_weight_decay_needs_weight_decay_0_in_a_grid():
    options = {"aalr": {"optimizer": f"{__name__}:PlainSGD"}}
    with pytest.raises(GridError, match="method_options.aalr: .*takes no weight_decay"):
        parse_grid({**GRID, "methods": ["aalr"], "method_options": options}, source="g.yaml")
    grid = parse_grid({**GRID, "methods": ["aalr"], "method_options": options, "weight_decay": 0}, source="g.yaml")
    assert expand(grid)[0]["method_options"] == {"optimizer": f"{__name__}:PlainSGD"}


# ------------------------------------------------------ runs, grids, league
def test_quickstart_and_the_league_include_the_adam_methods():
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    methods = {c["method"] for c in expand(load_grid(root / "jobs" / "quickstart.yaml"))}
    assert {"aalr-adam", "aalr-robust-adam"} <= methods
    sys.path.insert(0, str(root / "bench"))
    try:
        import league
    finally:
        sys.path.remove(str(root / "bench"))
    assert {"aalr-adam", "aalr-robust-adam"} <= set(league.league_methods("all"))


def test_a_grid_of_aalr_adam_validates_and_its_trial_runs_and_resumes_bit_for_bit(data_dir):
    options = {"aalr-adam": {"optimizer_options": {"betas": [0.9, 0.99]}}}
    configs = expand(parse_grid({**GRID, "method_options": options}, source="g.yaml"))
    assert [(c["method"], c["seed"]) for c in configs] == [("aalr-adam", 0), ("aalr-adam", 1)]
    names = {f for f in RunConfig.__dataclass_fields__}
    config = RunConfig(**{**{k: v for k, v in configs[0].items() if k in names}, "epochs": 4, "data_dir": data_dir})
    whole = TrainingRun(config)
    rows = list(whole)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and rows[0]["lr"] == pytest.approx(1e-3)
    assert all(math.isfinite(r["train_loss"]) for r in rows) and rows[-1]["train_loss"] < whole.initial_loss
    assert whole.method.optimizer.param_groups[0]["betas"] == (0.9, 0.99)

    part = TrainingRun(config)
    head = [part.train_one_epoch() for _ in range(2)]
    buffer = io.BytesIO()
    torch.save(part.state_dict(), buffer)
    buffer.seek(0)
    resumed = TrainingRun(config)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    timing = ("epoch_s", "eval_s")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert strip(head) + strip(list(resumed)) == strip(rows)


@pytest.mark.ray
def test_a_grid_of_aalr_adam_runs_on_local_ray(local_ray, data_dir, tmp_path):
    import pyarrow.parquet as pq

    from aalr_ray.runner import run_grid

    job = tmp_path / "g19.yaml"
    job.write_text(yaml.safe_dump({**GRID, "max_concurrent": 2}))
    experiment, collected = run_grid(str(job), storage=str(tmp_path / "results"), data_dir=data_dir)
    assert collected.complete
    trials = pq.read_table(f"{experiment}/trials.parquet").to_pylist()
    epochs = pq.read_table(f"{experiment}/epochs.parquet").to_pylist()
    assert sorted((t["method"], t["seed"], t["status"]) for t in trials) == [
        ("aalr-adam", 0, "TERMINATED"), ("aalr-adam", 1, "TERMINATED")]
    assert len(epochs) == 4 and all(r["epoch"] != 1 or r["lr"] == pytest.approx(1e-3) for r in epochs)
