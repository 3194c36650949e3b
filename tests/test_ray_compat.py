"""aalr_ray._ray_compat on the installed Ray: the supported range, and every private name it relies on.

No test here starts Ray: the trials are stubs, as in tests/test_scheduler.py.
"""

import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from aalr_ray import _ray_compat
from aalr_ray._ray_compat import SUPPORTED_RAY
from tune_helpers import register, stub_trial

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


# ------------------------------------------------------------ the Ray range
def test_the_installed_ray_is_in_the_supported_range():
    problem = _ray_compat.ray_version_problem()
    assert problem is None, problem


@pytest.mark.parametrize("version, supported", [("2.60.0", True), ("2.60.3", True), ("2.59.9", False),
                                                ("2.61.0", False), ("3.0.0", False)])
def test_a_ray_outside_the_range_is_named_in_one_sentence(version, supported):
    problem = _ray_compat.ray_version_problem(version)
    if supported:
        assert problem is None
    else:
        assert problem.startswith(f"Ray {version} is installed; aalr-ray is tested with Ray >=2.60,<2.61: ")
        assert problem.count(". ") == 0 and "\n" not in problem  # one sentence


def test_pyproject_pins_ray_to_the_range_in_the_code():
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (ray,) = [Requirement(d) for d in dependencies if Requirement(d).name == "ray"]
    assert ray.specifier == SpecifierSet(",".join(SUPPORTED_RAY)), (
        f"pyproject.toml pins {ray}, aalr_ray/_ray_compat.py SUPPORTED_RAY is {SUPPORTED_RAY}: make them agree")
    assert ray.extras == {"default", "tune", "train"}


# ------------------------------------------------------ the scheduler's names
def test_training_result_is_what_the_checkpoint_manager_registers():
    trial = stub_trial()
    checkpoint = register(trial, "checkpoint_000000", {"train_loss": 1.0})
    latest = trial.latest_checkpoint_result
    assert type(latest).__name__ == "_TrainingResult"
    assert latest.checkpoint is checkpoint and latest.metrics == {"train_loss": 1.0}
    assert trial.checkpoint is checkpoint


@pytest.mark.parametrize("num_to_keep", [None, 3])
def test_checkpoint_num_to_keep(num_to_keep):
    assert _ray_compat.checkpoint_num_to_keep(stub_trial(num_to_keep=num_to_keep)) == num_to_keep


def test_registered_checkpoint_results_are_latest_first():
    trial = stub_trial()
    assert _ray_compat.registered_checkpoint_results(trial) == []
    first = register(trial, "checkpoint_000000", {"train_loss": 2.0})
    second = register(trial, "checkpoint_000001", {"train_loss": 1.0})
    results = _ray_compat.registered_checkpoint_results(trial)
    assert results[0].checkpoint is second
    assert {r.checkpoint.path for r in results} == {first.path, second.path}


def test_set_unresolved_config_keeps_keys_through_the_restore_rebuild():
    """Tune rebuilds a restored trial's config from its unresolved copy; without
    the private write a key set with set_config is lost there."""
    assert "_Trial__unresolved_config" in stub_trial().__dict__
    for write_unresolved, kept in ((False, False), (True, True)):
        trial = stub_trial()
        trial.set_config({**trial.config, "lr": 0.2})
        if write_unresolved:
            _ray_compat.set_unresolved_config(trial, {"lr": 0.2})
        trial.resolve_config_placeholders({})
        assert ("lr" in trial.config) is kept
        assert trial.config["seed"] == 0


def test_set_restore_point_chooses_the_checkpoint_and_reaches_the_snapshot():
    trial = stub_trial()
    first = register(trial, "checkpoint_000000", {"train_loss": 2.0})
    register(trial, "checkpoint_000001", {"train_loss": 1.0})
    before = trial.get_json_state()[1]  # caches the run metadata's JSON

    _ray_compat.set_restore_point(trial, _ray_compat.training_result(first, {"train_loss": 2.0}))
    assert trial.checkpoint is first
    after = trial.get_json_state()[1]
    assert after != before
    restored = stub_trial()
    restored.restore_run_metadata(after)  # what Tuner.restore reads from the snapshot
    assert restored.checkpoint.path == first.path

    _ray_compat.set_restore_point(trial, None)
    assert trial.checkpoint is None


# ------------------------------------------------------ the DDP driver's names
def test_trial_storage_is_the_trial_directory_in_storage(tmp_path, monkeypatch):
    import pyarrow.fs as pafs
    import ray.tune.context
    from ray.train._internal.storage import StorageContext

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="trial_0")
    # What tune.get_context().get_storage() reads inside a running trial.
    monkeypatch.setattr(ray.tune.context.session, "get_storage", lambda: storage)
    filesystem, path = _ray_compat.trial_storage()
    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert Path(path) == tmp_path / "exp" / "trial_0"


def test_advance_checkpoint_index_names_the_next_checkpoint_directory(tmp_path, monkeypatch):
    import ray.tune.context
    from ray.train._internal.storage import StorageContext

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="trial_0",
                             current_checkpoint_index=2)
    monkeypatch.setattr(ray.tune.context.session, "get_storage", lambda: storage)
    _ray_compat.advance_checkpoint_index(6)
    storage._update_checkpoint_index({})  # what a report with a checkpoint does first
    assert storage.checkpoint_dir_name == "checkpoint_000007"
    _ray_compat.advance_checkpoint_index(3)  # never backwards, over newer directories
    assert storage.current_checkpoint_index == 7


# ------------------------------------------------------- the grid driver's names
def test_tolerate_pruned_checkpoints_makes_deleting_a_missing_checkpoint_a_no_op(tmp_path):
    import pyarrow.fs as pafs
    from ray.train._internal import checkpoint_manager

    assert _ray_compat.tolerate_pruned_checkpoints() is True
    assert _ray_compat.tolerate_pruned_checkpoints() is True  # idempotent
    checkpoint_manager._delete_fs_path(fs=pafs.LocalFileSystem(), fs_path=str(tmp_path / "gone"))
    present = tmp_path / "present"
    present.mkdir()
    checkpoint_manager._delete_fs_path(fs=pafs.LocalFileSystem(), fs_path=str(present))
    assert not present.exists()


# ------------------------------------------- dog-optimizer (methods.py, not Ray)
def test_dog_private_update_is_still_there_and_tolerates_nan():
    """aalr_ray.methods overrides dog.DoG._update_group_state (checked against 1.0.3)."""
    import dog

    from aalr_ray.methods import _nan_tolerant_dog

    assert callable(getattr(dog.DoG, "_update_group_state", None))
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = _nan_tolerant_dog()([param])
    param.grad = torch.tensor([1.0, 0.5, 0.25])
    optimizer.step()
    param.grad = torch.tensor([float("nan"), 0.0, 0.0])
    optimizer.step()  # dog.DoG itself raises AssertionError here
    assert torch.isnan(optimizer.param_groups[0]["eta"][0])

    zero = torch.nn.Parameter(torch.ones(3))
    zero.grad = torch.zeros(3)
    with pytest.raises(AssertionError):  # a genuine G <= 0 stays DoG's own error
        _nan_tolerant_dog()([zero], eps=0.0).step()
