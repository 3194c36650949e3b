"""How a run computes (issue 18): precision, channels_last and where AALR keeps its snapshots.

On a CPU: bf16 autocast trains and resumes bit for bit, channels_last forced on
does too, everything that is kept stays fp32, fp16 is refused, host snapshots
restore what device snapshots do, and a GradScaler's skipped steps reach AALR
as bad batches (through a scripted stand-in: fp16 autocast needs CUDA). The
CUDA tests at the end run only where a GPU is.
"""

import io
import math

import pytest
import torch

from aalr_ray.controller import AALRController, measure_loss, train_epoch
from aalr_ray.core import Action
from aalr_ray.data import load_dataset
from aalr_ray.loops import LOSS_SCALE_FLOOR
from aalr_ray.train import RunConfig, TrainingRun, cpu_bf16_autocast, precision_choices, resolve_precision

TIMINGS = ("epoch_s", "eval_s")
CUDA = torch.cuda.is_available()
needs_cpu_bf16 = pytest.mark.skipif(
    not cpu_bf16_autocast(),
    reason="SKIPPED ON PURPOSE: aalr_ray.train.cpu_bf16_autocast() is False: this CPU or torch build "
           "cannot run a bf16 autocast matmul, so bf16 on the CPU is refused here")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def few_digits(tmp_path_factory):
    """A third of digits, for bf16: without AVX512-BF16 or AMX the CPU emulates it, about 15x slower."""
    return load_dataset("digits", data_dir=tmp_path_factory.mktemp("data"), train_limit=512, test_limit=128)


def bf16_config(epochs=3, **kwargs):
    return config(epochs, precision="bf16", batch_size=64, **kwargs)


def config(epochs=3, **kwargs):
    kwargs.setdefault("device", "cpu")
    return RunConfig(model="small-cnn", dataset="digits", method="aalr", epochs=epochs, **kwargs)


def strip(rows):
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def saved(run: TrainingRun) -> dict:
    """The run's checkpoint as it comes back from disk."""
    buffer = io.BytesIO()
    torch.save(run.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def resumed_rows(make_run, epochs_before: int) -> tuple[list[dict], TrainingRun]:
    """Rows of a run stopped after ``epochs_before`` epochs, checkpointed, and continued in a new run."""
    part = make_run()
    head = [part.train_one_epoch() for _ in range(epochs_before)]
    rest = make_run()
    rest.load_state_dict(saved(part))
    return strip(head) + strip(rest), rest


def tensors(item):
    """Every tensor in a nesting of dicts and lists (a state dict)."""
    if isinstance(item, torch.Tensor):
        yield item
    elif isinstance(item, dict):
        for value in item.values():
            yield from tensors(value)
    elif isinstance(item, (list, tuple)):
        for value in item:
            yield from tensors(value)


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------- defaults
def test_the_defaults_on_a_cpu_are_the_run_of_before(digits):
    run = TrainingRun(config(epochs=1, device="cpu" if CUDA else "auto"), data=digits)
    assert (run.precision, run.channels_last, run.snapshot_device, run.scaler) == ("fp32", False, "same", None)
    assert resolve_precision("auto", "cpu") == "fp32"


# ----------------------------------------------------------------------- bf16
@needs_cpu_bf16
def test_bf16_autocast_trains_and_resumes_bit_for_bit(few_digits):
    whole = TrainingRun(bf16_config(), data=few_digits)
    assert whole.precision == "bf16"
    expected = strip(whole)
    losses = [row["train_loss"] for row in expected]
    assert losses == sorted(losses, reverse=True) and losses[-1] < whole.initial_loss - 0.05, losses  # 2.30 -> 2.20
    rows, resumed = resumed_rows(lambda: TrainingRun(bf16_config(), data=few_digits), 1)
    assert rows == expected
    assert_same_weights(whole.model.state_dict(), resumed.model.state_dict())


@needs_cpu_bf16
def test_bf16_keeps_weights_optimizer_state_and_checkpoints_in_fp32(few_digits):
    run = TrainingRun(bf16_config(epochs=2), data=few_digits)
    seen = []
    hook = run.model.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    run.train_one_epoch()
    hook.remove()
    assert torch.bfloat16 in seen  # autocast really ran the forward passes in bf16
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}
    assert run.method.optimizer.state, "the optimizer has state after an epoch"
    for state in run.method.optimizer.state.values():
        assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float32}
    floating = [t for t in tensors(saved(run)) if t.is_floating_point()]
    assert floating and {t.dtype for t in floating} == {torch.float32}
    assert math.isfinite(run.train_one_epoch()["train_loss"])


@needs_cpu_bf16
def test_a_checkpoint_resumes_only_in_the_precision_it_was_trained_in(few_digits):
    bf16 = TrainingRun(bf16_config(epochs=2), data=few_digits)
    bf16.train_one_epoch()
    with pytest.raises(ValueError, match="differs in precision: bf16 there, fp32 here"):
        TrainingRun(config(epochs=2, batch_size=64), data=few_digits).load_state_dict(saved(bf16))


def test_a_checkpoint_from_before_these_fields_loads_as_fp32(digits):
    run = TrainingRun(config(epochs=2), data=digits)
    run.train_one_epoch()
    old = saved(run)
    del old["precision"]
    for key in ("precision", "channels_last", "snapshot_device"):
        del old["config"][key]
    later = TrainingRun(config(epochs=2), data=digits)
    later.load_state_dict(old)  # precision "auto" resolves to fp32 on a CPU: the same run
    assert_same_weights(later.model.state_dict(), run.model.state_dict())


# -------------------------------------------------------------- channels_last
def test_channels_last_forced_on_trains_and_resumes_bit_for_bit(digits):
    whole = TrainingRun(config(channels_last="on"), data=digits)
    assert whole.channels_last
    weight = whole.model.net.features[2].weight  # (32, 16, 3, 3): the first conv has one input channel
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    expected = strip(whole)
    assert expected[-1]["train_loss"] < whole.initial_loss
    rows, resumed = resumed_rows(lambda: TrainingRun(config(channels_last="on"), data=digits), 1)
    assert rows == expected
    assert_same_weights(whole.model.state_dict(), resumed.model.state_dict())
    assert {p.dtype for p in whole.model.parameters()} == {torch.float32}


def test_a_channels_last_checkpoint_loads_into_a_run_without_it(digits):
    on = TrainingRun(config(epochs=2, channels_last="on", snapshot_device="cpu"), data=digits)
    on.train_one_epoch()
    off = TrainingRun(config(epochs=2, channels_last="off"), data=digits)
    off.load_state_dict(saved(on))  # how a run computes is not what it trains: accepted
    assert not off.model.net.features[2].weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_weights(off.model.state_dict(), on.model.state_dict())
    for a, b in zip(off.method.optimizer.state.values(), on.method.optimizer.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert math.isfinite(off.train_one_epoch()["train_loss"])


def test_channels_last_auto_is_off_on_a_cpu_and_on_applies_to_images_only(digits, tmp_path):
    assert not TrainingRun(config(epochs=1), data=digits).channels_last
    signals = TrainingRun(RunConfig(model="mnist1d-cnn", dataset="mnist1d", method="aalr", epochs=1,
                                    channels_last="on", data_dir=str(tmp_path)))
    assert not signals.channels_last  # (C, L) examples have no channels_last layout


# ------------------------------------------------------------- refused input
@pytest.mark.skipif(CUDA, reason="fp16 runs where CUDA is")
def test_fp16_on_a_cpu_is_refused_in_one_line():
    with pytest.raises(ValueError) as info:
        TrainingRun(config(precision="fp16"))
    message = str(info.value)
    assert "\n" not in message
    assert message == ("precision 'fp16' cannot run on device cpu (fp16 needs a CUDA GPU, for its GradScaler); "
                       f"choose from: auto, fp32{', bf16' if cpu_bf16_autocast() else ''}")


@pytest.mark.parametrize("field, value", [("precision", "fp8"), ("channels_last", "sideways"),
                                          ("snapshot_device", "gpu")])
def test_unknown_values_are_refused_with_the_choices(field, value):
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'; choose from: auto, "):
        config(**{field: value})


def test_channels_last_takes_yaml_booleans():
    assert (config(channels_last=True).channels_last, config(channels_last=False).channels_last) == ("on", "off")


# ------------------------------------------------------------------ snapshots
@pytest.fixture(scope="module")
def digit_tensors():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def batches(data, epoch, batch_size=128):
    x, y = data
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
    for i in range(0, len(y), batch_size):
        yield x[order[i:i + batch_size]], y[order[i:i + batch_size]]


def controlled(snapshot_device, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, AALRController(model, optimizer, max_epochs=20, phase1_patience=1,
                                            snapshot_device=snapshot_device, **kwargs)


def rolled_back(snapshot_device, data):
    """Weights and momentum after each rollback, forced by construction: theta_0 back after an
    inf epoch, then the best weights back after a NaN one."""
    model, optimizer, aalr = controlled(snapshot_device)
    loss_fn = torch.nn.functional.cross_entropy
    aalr.start(measure_loss(model, batches(data, 0), loss_fn))
    states = []
    train_epoch(model, optimizer, batches(data, 1), loss_fn)
    assert aalr.step(math.inf) is Action.RESTORE_INITIAL
    states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert aalr.step(train_epoch(model, optimizer, batches(data, 2), loss_fn)) is Action.SAVE_BEST
    snapshots = aalr.state_dict()
    train_epoch(model, optimizer, batches(data, 3), loss_fn)  # move away from the best
    assert aalr.step(math.nan) is Action.RESTORE_BEST
    states.append({k: v.clone() for k, v in model.state_dict().items()})
    states.append({i: s["momentum_buffer"].clone() for i, s in enumerate(optimizer.state.values())})
    return states, snapshots, aalr


def test_host_snapshots_restore_what_device_snapshots_do_bit_for_bit(digit_tensors):
    same, same_state, _ = rolled_back("same", digit_tensors)
    host, host_state, aalr = rolled_back("cpu", digit_tensors)
    for a, b in zip(same, host):
        assert_same_weights(a, b)
    # The checkpoint holds the same snapshots, in the same format.
    assert same_state.keys() == host_state.keys()
    same_tensors, host_tensors = list(tensors(same_state)), list(tensors(host_state))
    assert len(same_tensors) == len(host_tensors) > 0
    for a, b in zip(same_tensors, host_tensors):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    for t in tensors(aalr._best):
        # In CPU memory; pinned only for a model on a GPU (none here: see the CUDA test).
        assert t.device.type == "cpu" and not t.is_pinned()


def test_snapshot_device_reaches_the_controller_and_auto_is_same(digits):
    assert TrainingRun(config(epochs=1, snapshot_device="cpu"), data=digits).method.controller.snapshot_device == "cpu"
    run = TrainingRun(config(epochs=1), data=digits)
    assert run.snapshot_device == "same" and run.method.controller.snapshot_device == "same"
    with pytest.raises(ValueError, match="snapshot_device must be one of same, cpu"):
        controlled("gpu")


def test_a_trial_holding_a_fraction_of_a_gpu_keeps_its_snapshots_on_the_host():
    from aalr_ray.trainable import snapshots_for_trial

    auto = config()
    assert snapshots_for_trial(auto, gpus=0.25).snapshot_device == "cpu"
    assert snapshots_for_trial(auto, gpus=1).snapshot_device == "auto"  # a GPU of its own: "same"
    assert snapshots_for_trial(auto, gpus=0).snapshot_device == "auto"
    assert snapshots_for_trial(config(snapshot_device="same"), gpus=0.25).snapshot_device == "same"
    assert snapshots_for_trial(auto).snapshot_device == "auto"  # outside a Tune trial


# --------------------------------------------------------- loss-scaler skips
class ScriptedScaler:
    """A GradScaler's interface with its skips scripted: the steps numbered in ``skips`` (from 1)
    find inf gradients, so the optimizer does not step and the scale halves, as GradScaler does."""

    def __init__(self, skips=(), scale=4.0):
        self.skips, self._scale, self.steps, self.skipped = set(skips), float(scale), 0, 0

    def scale(self, loss):
        return loss  # the gradients' scale is GradScaler's business; the contract is the skips

    def step(self, optimizer):
        self.steps += 1
        if self.steps in self.skips:
            self.skipped += 1
            self._skip = True
        else:
            self._skip = False
            optimizer.step()

    def update(self):
        if self._skip:
            self._scale /= 2

    def get_scale(self):
        return self._scale

    def state_dict(self):
        return {"scale": self._scale, "steps": self.steps}

    def load_state_dict(self, state):
        self._scale, self.steps = state["scale"], state["steps"]


def test_skips_that_take_the_scale_below_the_floor_end_the_epoch_as_a_bad_batch(digit_tensors):
    model, optimizer, _ = controlled("same")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler = ScriptedScaler(skips={1, 2, 3}, scale=4 * LOSS_SCALE_FLOOR)  # 4 -> 2 -> 1 -> 0.5
    loss = train_epoch(model, optimizer, batches(digit_tensors, 0), torch.nn.functional.cross_entropy,
                       scaler=scaler)
    assert math.isnan(loss)
    assert scaler.steps == 3  # 15 batches in an epoch: it stopped at the third, as at a NaN loss
    assert_same_weights(model.state_dict(), before)  # skipped steps never reached the weights


def test_routine_skips_while_the_scale_settles_are_not_bad_batches(digit_tensors):
    model, optimizer, _ = controlled("same")
    scaler = ScriptedScaler(skips={1, 2, 9}, scale=2.0**16)
    loss = train_epoch(model, optimizer, batches(digit_tensors, 0), torch.nn.functional.cross_entropy,
                       scaler=scaler)
    assert math.isfinite(loss) and scaler.steps == 15 and scaler.skipped == 3
    assert scaler.get_scale() == 2.0**13


def test_a_collapsed_scale_reaches_aalr_as_a_bad_epoch_and_is_put_back(digits):
    run = TrainingRun(config(epochs=3), data=digits)
    run.scaler = ScriptedScaler(skips=range(1, 100), scale=2.0)  # every step of the run finds inf
    row = run.train_one_epoch()
    assert row["bad_loss"] and row["action"] == "restore_initial"
    assert run.scaler.get_scale() == 2.0  # the scale the epoch started with, not the collapsed one
    state = saved(run)
    assert state["scaler"] == {"scale": 2.0, "steps": 0}
    resumed = TrainingRun(config(epochs=3), data=digits)
    resumed.scaler = ScriptedScaler(scale=123.0)
    resumed.load_state_dict(state)
    assert resumed.scaler.state_dict() == {"scale": 2.0, "steps": 0}


# ----------------------------------------------------------------- CUDA only
@needs_cuda
def test_auto_on_cuda_is_bf16_and_channels_last_for_a_cnn(digits):
    run = TrainingRun(config(epochs=1, device="cuda"), data=digits)
    assert run.precision == ("bf16" if "bf16" in precision_choices("cuda") else "fp32")
    assert run.channels_last and run.snapshot_device == "same"
    assert math.isfinite(run.train_one_epoch()["train_loss"])


@needs_cuda
def test_fp16_on_cuda_resumes_bit_for_bit_with_the_scaler_state(digits):
    def make():
        return TrainingRun(config(precision="fp16", device="cuda"), data=digits)

    whole = make()
    expected = strip(whole)
    assert "scaler" in whole.state_dict()
    rows, _ = resumed_rows(make, 1)
    assert rows == expected


@needs_cuda
def test_host_snapshots_of_a_gpu_model_are_pinned_and_restore_onto_the_gpu(digit_tensors):
    model, optimizer, aalr = controlled("cpu")
    model.cuda()
    data = tuple(t.cuda() for t in digit_tensors)
    loss_fn = torch.nn.functional.cross_entropy
    aalr.start(measure_loss(model, batches(data, 0), loss_fn))
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(t.device.type == "cpu" and t.is_pinned() for t in tensors(aalr._initial["model"]))
    train_epoch(model, optimizer, batches(data, 1), loss_fn)
    assert aalr.step(math.inf) is Action.RESTORE_INITIAL
    assert all(p.is_cuda for p in model.parameters())
    assert_same_weights(model.state_dict(), theta0)
