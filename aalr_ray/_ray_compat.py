"""Every use of Ray's private or undocumented API (and of pyarrow's S3 pickle state), in one place.

Each function names the Ray version it was checked against and what it
relies on; ``tests/test_ray_compat.py`` checks each of them on the installed
Ray. aalr-ray supports the Ray versions in :data:`SUPPORTED_RAY` (the pin in
``pyproject.toml``); a new Ray release needs these functions rechecked before
the range is widened.

Users: the Tune scheduler (:mod:`aalr_ray.scheduler`), the trainable
(:mod:`aalr_ray.trainable`), the data-parallel trial driver
(:mod:`aalr_ray.distributed`) and the grid driver
(:mod:`aalr_ray.runner`); :mod:`aalr_ray.storage` for
:func:`s3_filesystem_options`. Imports nothing from Ray at module level.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["SUPPORTED_RAY", "ray_version_problem", "training_result", "checkpoint_num_to_keep",
           "registered_checkpoint_results", "set_unresolved_config", "set_restore_point",
           "trial_storage", "advance_checkpoint_index", "tolerate_pruned_checkpoints", "s3_filesystem_options"]

logger = logging.getLogger(__name__)

# The Ray versions aalr-ray is tested with; pyproject.toml pins the same range
# (tests/test_ray_compat.py checks that the two agree).
SUPPORTED_RAY: Tuple[str, ...] = (">=2.60", "<2.61")
_CHECKED_WITH = "2.60.0"  # the Ray version every function below was checked against


def ray_version_problem(version: Optional[str] = None) -> Optional[str]:
    """None if Ray ``version`` (default: the installed one) is in :data:`SUPPORTED_RAY`, else why not.

    The answer is one sentence, e.g. "Ray 2.61.0 is installed; aalr-ray is
    tested with Ray >=2.60,<2.61: ...".
    """
    from packaging.specifiers import SpecifierSet

    if version is None:
        import ray

        version = ray.__version__
    supported = ",".join(SUPPORTED_RAY)
    if SpecifierSet(supported).contains(version, prereleases=True):
        return None
    return (f"Ray {version} is installed; aalr-ray is tested with Ray {supported}: install a Ray in that "
            f"range (pip install 'ray[default,tune,train]{supported}'), or recheck aalr_ray/_ray_compat.py "
            f"against Ray {version} before widening SUPPORTED_RAY and the pin in pyproject.toml")


# ------------------------------------------------- Tune trials (the scheduler)
# AALRScheduler changes a trial's config and the checkpoint it restarts from,
# as PBT does in ray/tune/schedulers/pbt.py (_exploit); no public API does
# either. All of it goes through the functions below.

def training_result(checkpoint, metrics: Dict[str, Any]):
    """Tune's (checkpoint, metrics) pair, the object its checkpoint manager registers and restores from.

    Ray 2.60.0: the private class ``ray.train._internal.session._TrainingResult(checkpoint, metrics)``.
    """
    from ray.train._internal.session import _TrainingResult

    return _TrainingResult(checkpoint=checkpoint, metrics=metrics)


def _checkpoint_manager(trial):
    # Ray 2.60.0: Trial.run_metadata (a _TrainingRunMetadata) holds the trial's
    # checkpoint bookkeeping, a ray.train._internal.checkpoint_manager._CheckpointManager.
    return trial.run_metadata.checkpoint_manager


def checkpoint_num_to_keep(trial) -> Optional[int]:
    """The ``CheckpointConfig(num_to_keep=...)`` that Tune applies to ``trial``'s checkpoints.

    Ray 2.60.0: ``trial.run_metadata.checkpoint_manager.checkpoint_config``
    (a public property of the private ``_CheckpointManager``).
    """
    return _checkpoint_manager(trial).checkpoint_config.num_to_keep


def registered_checkpoint_results(trial) -> List[Any]:
    """The trial's registered results that hold a checkpoint: the latest first, then the kept ones.

    Ray 2.60.0: ``latest_checkpoint_result`` and ``best_checkpoint_results``
    of the private ``_CheckpointManager`` (objects of :func:`training_result`'s
    class, with ``.checkpoint`` and ``.metrics``).
    """
    manager = _checkpoint_manager(trial)
    candidates = [manager.latest_checkpoint_result, *manager.best_checkpoint_results]
    return [r for r in candidates if r is not None and r.checkpoint is not None]


def set_unresolved_config(trial, updates: Dict[str, Any]) -> None:
    """Merge ``updates`` into the copy of the config Tune rebuilds ``trial.config`` from on restore.

    When the param space holds objects, Tune swaps them for placeholders and,
    on ``Tuner.restore``, rebuilds ``trial.config`` from this unresolved copy
    (``Trial.resolve_config_placeholders``), which would silently drop keys
    set only with ``trial.set_config``. Plain JSON values only.

    Ray 2.60.0: the name-mangled private attribute ``Trial.__unresolved_config``
    (``trial._Trial__unresolved_config``); when it is ``trial.config`` itself
    there is nothing to do.
    """
    unresolved = trial.__dict__.get("_Trial__unresolved_config")
    if isinstance(unresolved, dict) and unresolved is not trial.config:
        trial._Trial__unresolved_config = {**unresolved, **updates}


def set_restore_point(trial, result) -> None:
    """Make ``trial`` restart from ``result``'s checkpoint (None: from no checkpoint).

    ``result`` is a :func:`training_result`; the trainable then sees it as
    ``tune.get_checkpoint()`` (None: ``tune.get_checkpoint()`` is None). Call
    it on a paused trial, as PBT's ``_exploit`` does.

    Ray 2.60.0: sets the private ``_CheckpointManager._latest_checkpoint_result``,
    which ``Trial.checkpoint`` (and so the restart) reads, then drops the
    cached JSON of ``trial.run_metadata`` (``invalidate_cache()``), so that
    the next experiment snapshot holds the new restore point.
    """
    _checkpoint_manager(trial)._latest_checkpoint_result = result
    trial.run_metadata.invalidate_cache()


# ------------------------------------------------ Tune trials (the DDP driver)
def trial_storage() -> Tuple[Any, str]:
    """(pyarrow filesystem, path in it) of the running Tune trial's directory in the experiment storage.

    Call it inside a Tune trial. Not ``tune.get_context().get_trial_dir()``:
    on object storage that is a local staging path.

    Ray 2.60.0: ``tune.get_context().get_storage()``, a DeveloperAPI whose
    ``StorageContext`` (``storage_filesystem``, ``trial_fs_path``) "may change
    without notice between minor versions" (its docstring).
    """
    from ray import tune

    storage = tune.get_context().get_storage()
    return storage.storage_filesystem, storage.trial_fs_path


def advance_checkpoint_index(index: int) -> None:
    """Make the running Tune trial's next checkpoint directory ``checkpoint_<index + 1>`` (or later).

    Ray 2.60.0: ``StorageContext.current_checkpoint_index`` of
    ``tune.get_context().get_storage()`` (a DeveloperAPI) is the index of the
    last checkpoint written; ``ray.train._internal.session`` increments it
    before each reported checkpoint and names the directory by it.
    """
    from ray import tune

    storage = tune.get_context().get_storage()
    storage.current_checkpoint_index = max(storage.current_checkpoint_index, index)


# ----------------------------------------------------------- the grid driver


def tolerate_pruned_checkpoints() -> bool:
    """Let Tune's checkpoint manager skip checkpoints that are already deleted. Ray 2.60.0.

    Relies on the private function ``_delete_fs_path(fs, fs_path)`` that
    ``ray.train._internal.checkpoint_manager`` imports from
    ``ray.train._internal.storage``; it is replaced in checkpoint_manager's
    namespace only.

    After a hard kill, ``Tuner.restore`` brings back each trial's checkpoint
    list as of the last experiment snapshot, which can name checkpoints that
    ``CheckpointConfig(num_to_keep=...)`` deleted since. When the trial reports
    its next checkpoint, the manager prunes one of those again;
    ``ray.train._internal.storage._delete_fs_path`` raises FileNotFoundError
    for the missing directory, Tune logs "Error handling checkpoint" with a
    traceback and the result is never registered, which left the trial's
    actor held and the run waiting forever (seen on a resume after a full
    disk). Deleting what is already gone is made a no-op; nothing else changes.

    Returns False (and changes nothing) where the private name is absent.
    """
    try:
        from ray.train._internal import checkpoint_manager
    except ImportError:
        return False
    original = getattr(checkpoint_manager, "_delete_fs_path", None)
    if original is None or getattr(original, "_aalr_tolerant", False):
        return original is not None

    def delete_if_present(fs, fs_path):
        try:
            return original(fs=fs, fs_path=fs_path)
        except FileNotFoundError:
            logger.debug("checkpoint %s was already deleted", fs_path)

    delete_if_present._aalr_tolerant = True
    checkpoint_manager._delete_fs_path = delete_if_present
    return True


def s3_filesystem_options(fs) -> dict:
    """The keyword arguments that rebuild a ``pyarrow.fs.S3FileSystem`` ({} when unknown). pyarrow 26.0.1.

    pyarrow has no public getter for an S3 filesystem's settings (endpoint,
    scheme, region, credentials); its pickle state, ``__reduce__()`` =
    ``(S3FileSystem._reconstruct, (kwargs,))``, holds them all. The storage
    check rebuilds the filesystem from them with short timeouts, and names
    the endpoint in its errors.
    """
    try:
        return dict(fs.__reduce__()[1][0])
    except (TypeError, IndexError, KeyError, ValueError):
        return {}
