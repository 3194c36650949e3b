"""Keep a Tune experiment restorable through full disks and hard kills.

Tune writes its experiment state (``experiment_state-*.json``, the search
state ``basic-variant-state-*.json`` and ``tuner.pkl``) into a staging
directory and copies it into storage. On a local disk that copy is not
atomic: a disk that fills up mid-copy leaves a truncated JSON file, and
``Tuner.restore`` then fails on every later try. Trial checkpoints are not at
risk: Tune registers a checkpoint only after its upload finished.

:class:`StateGuard` is a Tune callback that, between steps of the run, keeps
the last whole set of state files in one atomically written file
(``<experiment>/.aalr-ray/tune-state.json``); :func:`repair` puts that set
back when a file of it is torn, before a restore. On
object storage (S3) a PUT is all-or-nothing, so there is nothing to guard.

The guard also notices a trial that failed because the disk is full
(``errno 28``) and ends the run with :class:`DiskFullError`: retrying trials
on a full disk only fills it further. Raising from a callback leaves the
trials as they were (no final snapshot is written, and every unfinished trial
resumes from its latest checkpoint), unlike a Tune ``Stopper``, which marks
the trials it stops TERMINATED, so that a restore would skip them.
"""

from __future__ import annotations

import base64
import json
import pickletools
import time
from pathlib import Path

from ray import tune

from .storage import StorageError, atomic_write_local

__all__ = ["StateGuard", "DiskFullError", "full_disk_message", "backup", "repair", "torn_state_files", "STATE_DIR", "NO_SPACE"]

STATE_DIR = ".aalr-ray"
BUNDLE = "tune-state.json"  # {file name: base64 of its bytes}
STATE_PATTERNS = ("experiment_state-*.json", "basic-variant-state-*.json", "tuner.pkl")
NO_SPACE = ("No space left on device", "[Errno 28]", "errno 28")
BACKUP_EVERY_S = 1.0


class DiskFullError(OSError):
    """A trial could not write because the experiment's disk is full."""


# Tune wraps an exception raised by a callback into a TuneError holding only
# its traceback text, so the guard also records the message here, by experiment.
_full_disk: dict[str, str] = {}


def full_disk_message(experiment: str) -> str | None:
    """The one-line full-disk error this process saw in ``experiment``, or None."""
    return _full_disk.get(str(experiment))


def _is_local(experiment: str) -> bool:
    return "://" not in str(experiment)


def _intact(path: Path) -> bool:
    """True when ``path`` holds a whole state file: JSON that parses, or a complete pickle.

    Tune writes some ``.json`` state files as pickles. A pickle is checked by
    walking its opcodes (``pickletools``, which builds no objects) to the STOP
    at its very end; a truncated one runs out before.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return False
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        end = 0
        for opcode, _, position in pickletools.genops(data):
            end = position
        return bool(data) and opcode.name == "STOP" and end == len(data) - 1
    except Exception:  # any malformed or truncated stream
        return False


def _state_files(experiment: Path) -> list[Path]:
    return sorted(p for pattern in STATE_PATTERNS for p in experiment.glob(pattern))


def _bundle_path(experiment: Path) -> Path:
    return experiment / STATE_DIR / BUNDLE


def backup(experiment: str | Path, seen: dict | None = None) -> bool:
    """Save every state file of a local experiment, as one consistent set, into one file.

    One file written atomically, not one copy per file: Tune restores the
    experiment state and the search state together, and an older copy of one
    beside a newer copy of the other loses the trials created in between. The
    set is saved only when every file in it is whole, and only when one of
    them changed since ``seen`` (name -> (mtime, size)). A failed write (a full
    disk) keeps the previous set. Returns whether a new set was written.
    """
    experiment = Path(experiment)
    seen = {} if seen is None else seen
    try:
        stamps = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in _state_files(experiment)}
    except OSError:
        return False
    if not stamps or stamps == seen:
        return False
    files = _state_files(experiment)
    if not all(_intact(p) for p in files):
        return False  # mid-copy, or torn: keep the last whole set
    bundle = {p.name: base64.b64encode(p.read_bytes()).decode() for p in files}
    try:
        (experiment / STATE_DIR).mkdir(exist_ok=True)
        atomic_write_local(_bundle_path(experiment), json.dumps(bundle).encode())
    except (OSError, StorageError):
        return False  # full disk: try again later
    seen.clear()
    seen.update(stamps)
    return True


def repair(experiment: str | Path) -> list[str]:
    """Put the last whole set of state files back when any file of it is torn or missing.

    Returns the names written back. When they cannot be written (the disk is
    still full), the torn files are removed instead, so that no torn state is
    left behind, and the next repair (on ``--resume``) writes the set back.
    """
    if not _is_local(str(experiment)):
        return []
    experiment = Path(experiment)
    try:
        bundle = json.loads(_bundle_path(experiment).read_bytes())
    except (OSError, ValueError):
        return []
    if all(_intact(experiment / name) for name in bundle):
        return []
    try:
        for name, data in bundle.items():
            atomic_write_local(experiment / name, base64.b64decode(data))
    except StorageError:
        for path in _state_files(experiment):
            if not _intact(path):
                path.unlink(missing_ok=True)
        return []
    return sorted(bundle)


def torn_state_files(experiment: str | Path) -> list[str]:
    """State files of a local experiment that do not parse."""
    if not _is_local(str(experiment)):
        return []
    return [p.name for p in _state_files(Path(experiment)) if not _intact(p)]


def _error_text(trial) -> str:
    try:  # the driver-side error.txt; the pickled error may itself be torn
        return Path(trial.error_file).read_text(errors="replace")[-4000:] if trial.error_file else ""
    except OSError:
        return ""


class StateGuard(tune.Callback):
    """Backs up Tune's state files between steps; flags full-disk trial failures."""

    def __init__(self, experiment: str):
        self.experiment = str(experiment)
        self._seen: dict = {}
        self._last = 0.0

    def __getstate__(self):  # pickled into tuner.pkl: no per-run bookkeeping
        return {"experiment": self.experiment}

    def __setstate__(self, state):
        self.__init__(state["experiment"])

    def on_step_end(self, iteration, trials, **info):
        if _is_local(self.experiment) and time.monotonic() - self._last >= BACKUP_EVERY_S:
            self._last = time.monotonic()
            backup(self.experiment, self._seen)

    def on_experiment_end(self, trials, **info):
        if _is_local(self.experiment):
            backup(self.experiment, self._seen)

    def _check(self, trial) -> None:
        if any(marker in _error_text(trial) for marker in NO_SPACE):
            message = (f"no space left on device under {self.experiment} (trial {trial}); "
                       "free space, then continue with --resume")
            _full_disk[self.experiment] = message
            raise DiskFullError(28, message)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._check(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._check(trial)
