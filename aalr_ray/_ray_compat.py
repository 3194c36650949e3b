"""Work-arounds for Ray internals, in one place, each checked against the Ray version it names.

Imported by the grid driver only (never by trials).
"""

from __future__ import annotations

import logging

__all__ = ["tolerate_pruned_checkpoints"]

logger = logging.getLogger(__name__)


def tolerate_pruned_checkpoints() -> bool:
    """Let Tune's checkpoint manager skip checkpoints that are already deleted. Ray 2.60.0.

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
